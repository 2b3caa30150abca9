//! Compiles the public API (`proto/paymentswitch/v1/*.proto`) into Rust with tonic and prost, and writes
//! the descriptor set that server reflection serves.

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
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("switch_v1_descriptor.bin"))
        .compile_protos(&files, &[proto_root])?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
