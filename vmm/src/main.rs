//! husk-vmm: one micro-VM per process. Reads the VM from its arguments
//! ([`VmmConfig::parse`], the same type the launcher writes them with),
//! runs it ([`husk_vmm::run`]) and exits when the guest powers off or
//! resets, or on SIGTERM/SIGINT.
//!
//! Exit status: 0 when the guest ended itself or the host asked it to
//! stop (and for `--help`), 1 when the arguments are wrong, the VM could
//! not be set up, or KVM failed while running it.

use husk_vmm_config::{ConfigError, VmmConfig, USAGE};
use std::error::Error;
use std::io::IsTerminal;
use std::process::ExitCode;

/// The error and its causes, "outer: inner: ...", leaving out a cause
/// whose text the message already carries (husk's errors name their cause
/// in their own message).
fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut message = String::new();
    let mut cause = Some(e);
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        cause = e.source();
    }
    message
}

fn main() -> ExitCode {
    // A panic on any thread ends the VM: a vCPU or device thread that died
    // half-way is worse than no VM (release builds unwind for the shim's
    // sake; here the default hook prints, then the process aborts).
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Plain text when stderr is a log file, as under the shim.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_VMM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Not through tracing: the cause must reach stderr whatever
    // HUSK_VMM_LOG filters.
    let config = match VmmConfig::parse(std::env::args_os().skip(1)) {
        Ok(config) => config,
        Err(ConfigError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("husk-vmm: {}\n{USAGE}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match husk_vmm::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-vmm: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_leaves_out_causes_already_in_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug, thiserror::Error)]
        #[error("initrd x: cannot open: {source}")]
        struct Open {
            source: std::io::Error,
        }
        #[derive(Debug, thiserror::Error)]
        #[error("setting up the VM")]
        struct Setup(#[source] Open);
        let e = Setup(Open { source: io });
        assert_eq!(
            error_chain(&e),
            "setting up the VM: initrd x: cannot open: no such file"
        );
    }
}
