//! Compiles proto/sluice/config/v1/*.proto with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../proto";
    let files = ["../proto/sluice/config/v1/config.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, [root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Secrets: their Debug impls (in proto.rs) redact them.
        .skip_debug([".sluice.config.v1.Certificate", ".sluice.config.v1.Snapshot"])
        .compile_fds(fds)?;
    Ok(())
}
