//! `popgw limits unlock`: an operator lifts a citizen's verification lock
//! (`popgw.v1.Limits.Unlock`, audited on the gateway).

use anyhow::Result;
use clap::Subcommand;
use popgw::client::connect;
use popgw::proto::gateway as pb;
use popgw::proto::gateway::limits_client::LimitsClient;

use crate::cli::conn::{rpc, show, Conn};

#[derive(Subcommand)]
pub(crate) enum LimitsCommand {
    /// Lift a citizen's lock for every client and forget the NO_MATCH answers counted
    /// about them (as an operator; `--as operator` by default). Audited on the gateway.
    Unlock {
        #[command(flatten)]
        conn: Conn,
        /// The citizen's 12-digit personal id.
        #[arg(long)]
        id: String,
        /// The ticket this is done for (kept in the audit log as its pseudonym).
        #[arg(long = "case")]
        case_id: String,
    },
}

pub(crate) async fn run(command: LimitsCommand) -> Result<()> {
    match command {
        LimitsCommand::Unlock {
            mut conn,
            id,
            case_id,
        } => {
            if conn.as_ == "portal" && conn.cert.is_none() {
                conn.as_ = "operator".into();
            }
            let answer = LimitsClient::new(connect(&conn.addr, &conn.certs()).await?)
                .unlock(pb::UnlockRequest {
                    personal_id: id,
                    case_id,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            show(conn.json, &answer, |a| {
                format!(
                    "{}; {} NO_MATCH answer(s) forgotten{}",
                    if a.was_locked {
                        "lock lifted"
                    } else {
                        "the citizen was not locked"
                    },
                    a.failures_forgotten,
                    if a.national {
                        " (here and in the national budget)"
                    } else {
                        " (on this node)"
                    }
                )
            })
        }
    }
}
