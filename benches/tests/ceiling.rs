//! The transport ceiling's two halves work together: the echo server over the switch's mutual
//! TLS transport answers every call the driver sends, and the driver counts them. (What it
//! measures is for BENCHMARKS.md; no timing is asserted here.)

use std::time::Duration;

use benches::ceiling::{self, Plan};
use benches::echo::{self, Transport};
use loadgen::connect::Connector;

/// An echo server on an ephemeral port with its own development CA, stopped through the sender.
struct Running {
    certs: tempfile::TempDir,
    address: std::net::SocketAddr,
    stopper: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_echo(transport: Transport) -> anyhow::Result<Running> {
    let certs = tempfile::tempdir()?;
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stopper, stopped) = tokio::sync::oneshot::channel::<()>();
    let dir = certs.path().to_path_buf();
    let served = tokio::spawn(async move {
        let bound = |address| {
            let _ = bound_tx.send(address);
        };
        echo::serve(transport, &dir, "127.0.0.1:0".parse()?, bound, async {
            let _ = stopped.await;
        })
        .await
    });
    Ok(Running { certs, address: bound_rx.await?, stopper, served })
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stopper.send(());
        self.served.await?
    }
}

async fn drive_echo(transport: Transport) -> anyhow::Result<ceiling::Measured> {
    let echo = start_echo(transport).await?;
    let plan = Plan {
        psps: 2,
        connections_per_psp: 2,
        concurrency: 16,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
    };
    let clients = match transport {
        Transport::SwitchMtls => {
            let server = format!("https://localhost:{}", echo.address.port());
            ceiling::connect(&Connector::new(std::slice::from_ref(&server), echo.certs.path(), "localhost")?, &plan)
                .await?
        }
        Transport::BarePlaintext => ceiling::connect_plaintext(echo.address, &plan).await?,
    };
    let measured = ceiling::drive(clients, &plan).await?;
    echo.stop().await?;
    Ok(measured)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_over_mutual_tls_is_answered_and_counted() -> anyhow::Result<()> {
    let measured = drive_echo(Transport::SwitchMtls).await?;
    assert_eq!(measured.failed, 0, "first failure: {:?}", measured.first_failure);
    assert!(measured.completed > 0, "nothing answered in the measured phase");
    assert_eq!(measured.latency_us.len(), measured.completed, "one latency sample per answered call");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_reference_answers_too() -> anyhow::Result<()> {
    let measured = drive_echo(Transport::BarePlaintext).await?;
    assert_eq!(measured.failed, 0, "first failure: {:?}", measured.first_failure);
    assert!(measured.completed > 0, "nothing answered in the measured phase");
    assert_eq!(measured.latency_us.len(), measured.completed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_gets_no_answer() -> anyhow::Result<()> {
    // The ceiling is only the switch's if its server refuses what the switch refuses.
    let echo = start_echo(Transport::SwitchMtls).await?;
    let ca = std::fs::read(switch::tls::DevelopmentCa::new(echo.certs.path()).ca_certificate())?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let connected = tonic::transport::Channel::from_shared(format!("https://localhost:{}", echo.address.port()))?
        .tls_config(tls)?
        .connect()
        .await;
    let answered = match connected {
        Err(_) => false,
        Ok(channel) => {
            let request = switch::proto::PayRequest { payment_id: vec![1; 16], ..Default::default() };
            switch::proto::payment_service_client::PaymentServiceClient::new(channel).pay(request).await.is_ok()
        }
    };
    assert!(!answered, "a client without a certificate was answered");
    echo.stop().await
}
