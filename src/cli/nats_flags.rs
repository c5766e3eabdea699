//! `--nats-*`: a NATS link's TLS files and credentials on the command line. They
//! override `[audit.witness]` of `--config` key by key; credentials given here replace
//! the configuration's.

use std::path::PathBuf;

use clap::Args;
use popgw::link::nats::NatsLink;

#[derive(Args, Debug, Default)]
pub(crate) struct NatsFlags {
    /// The CA of the NATS server's certificate (TLS).
    #[arg(long)]
    nats_ca: Option<PathBuf>,
    /// This client's certificate for NATS (TLS with client certificates).
    #[arg(long, requires = "nats_key")]
    nats_cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, requires = "nats_cert")]
    nats_key: Option<PathBuf>,
    /// The NATS user (with --nats-password-file).
    #[arg(long, requires = "nats_password_file")]
    nats_user: Option<String>,
    /// A file holding that user's password.
    #[arg(long, requires = "nats_user")]
    nats_password_file: Option<PathBuf>,
    /// A file holding a user nkey seed (`popgw audit witness nkey` makes one).
    #[arg(long, conflicts_with_all = ["nats_user", "nats_credentials_file"])]
    nats_nkey_seed_file: Option<PathBuf>,
    /// A NATS .creds file.
    #[arg(long, conflicts_with = "nats_user")]
    nats_credentials_file: Option<PathBuf>,
    /// The prefix of this client's reply subjects (as the server's permissions allow it).
    #[arg(long)]
    nats_inbox_prefix: Option<String>,
    /// Allow nats:// (plain text) to a host that is not loopback.
    #[arg(long)]
    nats_allow_plaintext: bool,
}

impl NatsFlags {
    /// `base` (the configuration's link, if any) with `url` and these flags applied;
    /// `None` when there is no URL at all.
    pub(crate) fn link(self, url: Option<String>, base: Option<NatsLink>) -> Option<NatsLink> {
        let mut link = match (url, base) {
            (Some(url), Some(base)) => NatsLink { url, ..base },
            (Some(url), None) => NatsLink::new(url),
            (None, Some(base)) => base,
            (None, None) => return None,
        };
        if self.nats_ca.is_some() {
            link.ca_file = self.nats_ca;
        }
        if self.nats_cert.is_some() {
            link.cert_file = self.nats_cert;
            link.key_file = self.nats_key;
        }
        if self.nats_user.is_some()
            || self.nats_nkey_seed_file.is_some()
            || self.nats_credentials_file.is_some()
        {
            link.user = self.nats_user;
            link.password_file = self.nats_password_file;
            link.nkey_seed_file = self.nats_nkey_seed_file;
            link.credentials_file = self.nats_credentials_file;
        }
        if self.nats_inbox_prefix.is_some() {
            link.inbox_prefix = self.nats_inbox_prefix;
        }
        link.allow_plaintext |= self.nats_allow_plaintext;
        Some(link)
    }
}
