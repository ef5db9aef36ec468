//! The `mvm` binary: parse, run, map the result to an exit code.

use clap::Parser;

fn main() {
    if mvm::guest::is_guest_init() {
        mvm::guest::init::main();
    }
    // Like other Unix tools, die quietly when a reader such as `head` goes away.
    // SAFETY: restoring the default disposition of SIGPIPE installs no handler code.
    unsafe {
        let _ =
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    let cli = mvm::cli::Cli::parse();
    let code = match mvm::run(cli) {
        Ok(code) => code,
        Err(error) => {
            mvm::error::report(&error, &mut std::io::stderr().lock());
            mvm::error::exit_code_of(&error).code()
        }
    };
    std::process::exit(code);
}
