// Generates the tonic client and server for the agent API from proto/agent.proto.
// protoc comes from Debian's protobuf-compiler (installed by scripts/setup.sh).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    tonic_build::configure().compile_protos(&["proto/agent.proto"], &["proto"])?;
    Ok(())
}
