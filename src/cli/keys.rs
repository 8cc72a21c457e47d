//! `ota keys`: the App's RSA key pair for the plugin's encryption.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use super::CliError;
use crate::crypto;

/// File name of the private key (the name Capgo's CLI uses, so existing setups carry over).
pub const PRIVATE_KEY_FILE: &str = ".capgo_key_v2";
/// File name of the public key.
pub const PUBLIC_KEY_FILE: &str = ".capgo_key_v2.pub";

/// `ota keys` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Generate an RSA-2048 key pair (PKCS#1 PEM) for encrypting and signing bundles.
    ///
    /// Writes DIR/.capgo_key_v2 (the private key: keep it in your CI's secrets, never in git)
    /// and DIR/.capgo_key_v2.pub, refusing to overwrite either, and prints the public key: put
    /// it in capacitor.config (plugins.CapacitorUpdater.publicKey) and in the App's
    /// spec.signing.publicKey.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Generate {
        /// The folder to write the two key files into (created if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
}

/// Runs an `ota keys` command.
pub fn run(command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Generate { out } => generate(&out),
    }
}

fn generate(dir: &Path) -> Result<(), CliError> {
    let private_path = dir.join(PRIVATE_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    for path in [&private_path, &public_path] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(CliError::input(format!(
                "{} already exists: refusing to overwrite a key (devices in the field trust the old one); move it away first",
                path.display()
            )));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::input(format!("cannot create {}: {e}", dir.display())))?;
    let pair = crypto::generate_key_pair().map_err(|e| CliError::input(e.to_string()))?;
    write_new(&private_path, &pair.private_pem, true)?;
    write_new(&public_path, &pair.public_pem, false)?;
    eprintln!(
        "wrote {} (the private key: keep it secret, e.g. in a CI secret; never commit it)",
        private_path.display()
    );
    eprintln!("wrote {}", public_path.display());
    eprintln!(
        "put this public key in capacitor.config (plugins.CapacitorUpdater.publicKey) and in the App's spec.signing.publicKey:"
    );
    super::emit(None, &pair.public_pem)
}

/// Creates `path` with `text`, failing if it exists; `secret` files are readable by the owner
/// only.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .map_err(|e| CliError::input(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::input(format!("cannot write {}: {e}", path.display())))
}
