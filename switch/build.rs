//! Compiles the public API (`proto/paymentswitch/v1/*.proto`) into Rust with tonic and prost, and writes
//! the descriptor set that server reflection serves.
//!
//! Two passes, because a decoder does not know which side of a call it serves. The servers decode
//! requests with `crate::codec::RequestCodec`, for which bytes that do not decode are the client's
//! error (INVALID_ARGUMENT, `REASON_REQUEST_MALFORMED`); the clients (loadgen, the CLI, tests) decode
//! answers with tonic-prost's codec, for which an answer that does not decode is the switch's fault
//! and no reason of the switch applies. The second pass generates the clients alone, in their own
//! file, with the messages of the first pass (`extern_path`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("../proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(proto_root.join("paymentswitch/v1"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "proto"))
        .collect();
    // Sorted so the generated code does not depend on directory order.
    files.sort();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .file_descriptor_set_path(out_dir.join("switch_v1_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&proto_root))?;
    let clients = out_dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .out_dir(&clients)
        .extern_path(".paymentswitch.v1", "crate::proto")
        .compile_protos(&files, &[proto_root])?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
