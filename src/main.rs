//! The `mvm` binary: parse, run, map the result to an exit code.

use clap::Parser;

fn main() {
    if mvm::guest::is_guest_init() {
        mvm::guest::init::main();
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
