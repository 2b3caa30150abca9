//! Compiles the node-to-node protocol (`proto/paymentswitch/cluster/v1/raft.proto`) with tonic.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["../proto/paymentswitch/cluster/v1/raft.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/paymentswitch/cluster");
    Ok(())
}
