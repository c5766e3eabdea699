//! `popgw certs init|issue|revoke`: the development PKI (never for production).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use popgw::pki;

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
    /// Write a development PKI (never for production).
    Init {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Issue a client certificate from the development CA: NAME.pem and NAME.key.
    Issue {
        /// The development PKI's folder.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// File name (letters, digits, - and _).
        #[arg(long)]
        name: String,
        /// The client identity, the certificate's URI SAN (spiffe://popgw.dev/portal/NAME).
        #[arg(long)]
        uri: String,
        /// Days of validity from today.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke NAME.pem: add it to the development CA's CRL (crl.pem), which a running
    /// gateway picks up within a second (or at SIGHUP).
    Revoke {
        /// The development PKI's folder.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// File name of the certificate (NAME.pem).
        #[arg(long)]
        name: String,
    },
}

pub(crate) fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Init { out } => {
            let _ca = pki::init(&out)?;
            out!(
                "wrote a development PKI to {} (development only)",
                out.display()
            );
            Ok(())
        }
        CertsCommand::Issue {
            dir,
            name,
            uri,
            days,
        } => {
            pki::issue(&dir, &name, &uri, days)?;
            out!(
                "issued {uri} as {}/{name}.pem and {name}.key ({days} days; development only)",
                dir.display()
            );
            Ok(())
        }
        CertsCommand::Revoke { dir, name } => {
            let serial = pki::revoke(&dir, &name)?;
            out!(
                "revoked {}/{name}.pem (serial {serial}) in {}/crl.pem",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
    }
}
