//! `ringkv`: the server, the local demo cluster, the client commands and the
//! benchmark, in one binary.

#[cfg(not(madsim))]
mod commands;

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    commands::main()
}

#[cfg(madsim)]
fn main() {
    eprintln!("the ringkv binary is not built for simulation; see the ringkv-sim crate");
}
