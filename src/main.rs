use clap::Parser;

fn main() {
    let cli = strait::cli::Cli::parse();
    strait::cli::init_logging(cli.log_format);
    if let Err(e) = strait::cli::run(cli) {
        eprintln!("strait: {e:#}");
        std::process::exit(1);
    }
}
