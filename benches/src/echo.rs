//! The echo side of the transport ceiling: the switch's `PaymentService` over the switch's own
//! PSP-port transport (`switch::server::psp_transport`: rustls mutual TLS, the same HTTP/2
//! windows, `TCP_NODELAY`), whose `Pay` answers at once without touching a directory, a
//! participant or a ledger. What a client achieves against it is what one payment per RPC can
//! reach on a machine before the switch does any work of its own.

use std::net::SocketAddr;

use switch::proto::payment_service_server::{PaymentService, PaymentServiceServer};
use switch::proto::{self, PaymentState};
use switch::server::TlsFiles;
use switch::tls::DevelopmentCa;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// `Pay` answers COMPLETED with the request's id and the time, the shape of the switch's answer
/// to an automatically accepted payment; every other method is refused.
pub struct Echo;

fn not_here() -> Status {
    Status::unimplemented("the transport ceiling's echo server answers Pay only")
}

#[tonic::async_trait]
impl PaymentService for Echo {
    async fn pay(&self, request: Request<proto::PayRequest>) -> Result<Response<proto::PaymentResult>, Status> {
        let request = request.into_inner();
        let now = switch::core::now_unix_ns();
        Ok(Response::new(proto::PaymentResult {
            payment_id: request.payment_id,
            state: PaymentState::Completed.into(),
            status_code: 0,
            accepted_at_unix_ns: now,
            finalized_at_unix_ns: now,
            ..Default::default()
        }))
    }

    async fn pay_batch(&self, _: Request<proto::PayBatchRequest>) -> Result<Response<proto::PayBatchResponse>, Status> {
        Err(not_here())
    }

    type PayStreamStream = tokio_stream::Empty<Result<proto::PayStreamResponse, Status>>;

    async fn pay_stream(
        &self,
        _: Request<Streaming<proto::PayStreamRequest>>,
    ) -> Result<Response<Self::PayStreamStream>, Status> {
        Err(not_here())
    }

    async fn get_payment_status(
        &self,
        _: Request<proto::GetPaymentStatusRequest>,
    ) -> Result<Response<proto::Payment>, Status> {
        Err(not_here())
    }

    async fn request_collect(
        &self,
        _: Request<proto::RequestCollectRequest>,
    ) -> Result<Response<proto::PaymentResult>, Status> {
        Err(not_here())
    }

    async fn refund(&self, _: Request<proto::RefundRequest>) -> Result<Response<proto::PaymentResult>, Status> {
        Err(not_here())
    }

    async fn get_position(
        &self,
        _: Request<proto::GetPositionRequest>,
    ) -> Result<Response<proto::Participant>, Status> {
        Err(not_here())
    }
}

/// How the echo server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The switch's PSP port: mutual TLS, its HTTP/2 windows.
    SwitchMtls,
    /// A bare tonic server: plaintext HTTP/2 and tonic's defaults (the "bare tonic echo server"
    /// the switch issue quotes as a reference).
    BarePlaintext,
}

/// Binds `listen`, calls `bound` with the address, and serves until `stop` resolves. Over mutual
/// TLS it creates the development CA in `certs` first when missing (server certificate for
/// `localhost`).
pub async fn serve(
    transport: Transport,
    certs: &std::path::Path,
    listen: SocketAddr,
    bound: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if transport == Transport::BarePlaintext {
        let listener = TcpListener::bind(listen).await?;
        bound(listener.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(PaymentServiceServer::new(Echo))
            .serve_with_incoming_shutdown(switch::server::accepted(listener), stop)
            .await?;
        return Ok(());
    }
    let ca = DevelopmentCa::new(certs);
    ca.ensure()?;
    let server = ca.server();
    let tls = TlsFiles {
        ca_certificate: ca.ca_certificate(),
        server_certificate: server.certificate,
        server_key: server.key,
    };
    let listener = TcpListener::bind(listen).await?;
    bound(listener.local_addr()?);
    switch::server::psp_transport(&tls)?
        .add_service(PaymentServiceServer::new(Echo))
        .serve_with_incoming_shutdown(switch::server::accepted(listener), stop)
        .await?;
    Ok(())
}
