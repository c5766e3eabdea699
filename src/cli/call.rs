//! The client commands that make one call to a gateway: `verify`, `citizen`,
//! `household`, `procedures` and `access-report`.

use anyhow::{bail, Result};
use clap::Args;
use popgw::client::connect;
use popgw::display;
use popgw::proto::gateway as pb;
use popgw::proto::gateway::citizen_access_client::CitizenAccessClient;
use popgw::proto::registry::Sex;

use super::conn::{rpc, show, Case, Conn};

// `popgw verify`: whether a declared identity belongs to one living citizen.
#[derive(Args)]
pub(crate) struct Verify {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Personal id (12 digits; 9 for P01).
    #[arg(long)]
    pub(crate) id: String,
    /// Full name as declared.
    #[arg(long)]
    pub(crate) name: String,
    /// Date of birth, YYYY-MM-DD (or YYYY when the record holds only the year).
    #[arg(long)]
    pub(crate) dob: String,
    /// male or female.
    #[arg(long)]
    pub(crate) sex: Option<String>,
    #[command(flatten)]
    pub(crate) case: Case,
}

// `popgw citizen`: a citizen's record, minimised to the procedure's profile.
#[derive(Args)]
pub(crate) struct Citizen {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Personal id.
    #[arg(long)]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) case: Case,
}

// `popgw household`: a citizen's household.
#[derive(Args)]
pub(crate) struct Household {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Personal id of any member.
    #[arg(long)]
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) case: Case,
}

// `popgw procedures`: the catalogue, from a gateway or built in.
#[derive(Args)]
pub(crate) struct Procedures {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Print the built-in catalogue as a catalogue file (no gateway needed).
    #[arg(long)]
    pub(crate) builtin_toml: bool,
}

// `popgw access-report`: a citizen's own view of who saw their data.
#[derive(Args)]
pub(crate) struct AccessReport {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// The citizen's 12-digit personal id.
    #[arg(long)]
    pub(crate) id: String,
    /// Only events at or after this time (ms since the epoch).
    #[arg(long, default_value_t = 0)]
    pub(crate) from_ms: i64,
    /// Only events at or before this time (ms since the epoch).
    #[arg(long, default_value_t = 0)]
    pub(crate) to_ms: i64,
}

impl Verify {
    pub(crate) async fn run(self) -> Result<()> {
        let Verify {
            conn,
            id,
            name,
            dob,
            sex,
            case,
        } = self;
        let sex = match sex.as_deref() {
            None => Sex::Unspecified,
            Some("male" | "m" | "nam") => Sex::Male,
            Some("female" | "f" | "nu" | "nữ") => Sex::Female,
            Some(other) => bail!("--sex {other:?}: use male or female"),
        };
        let answer = conn
            .gateway()
            .await?
            .verify_identity(pb::VerifyIdentityRequest {
                personal_id: id,
                full_name: name,
                date_of_birth: dob,
                sex: sex as i32,
                procedure_code: case.procedure,
                case_id: case.case_id,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        show(conn.json, &answer, display::verification)
    }
}

impl Citizen {
    pub(crate) async fn run(self) -> Result<()> {
        let Citizen { conn, id, case } = self;
        let answer = conn
            .gateway()
            .await?
            .get_citizen(pb::GetCitizenRequest {
                personal_id: id,
                procedure_code: case.procedure,
                case_id: case.case_id,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        show(conn.json, &answer, display::citizen)
    }
}

impl Household {
    pub(crate) async fn run(self) -> Result<()> {
        let Household { conn, id, case } = self;
        let answer = conn
            .gateway()
            .await?
            .get_household(pb::GetHouseholdRequest {
                personal_id: id,
                procedure_code: case.procedure,
                case_id: case.case_id,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        show(conn.json, &answer, display::household)
    }
}

impl Procedures {
    pub(crate) async fn run(self) -> Result<()> {
        if self.builtin_toml {
            out!(
                "{}",
                popgw::catalogue::Catalogue::builtin().to_toml().trim_end()
            );
            return Ok(());
        }
        let conn = self.conn;
        let answer = conn
            .gateway()
            .await?
            .list_procedures(pb::ListProceduresRequest {})
            .await
            .map_err(rpc)?
            .into_inner();
        show(conn.json, &answer, display::procedures)
    }
}

impl AccessReport {
    pub(crate) async fn run(self) -> Result<()> {
        let AccessReport {
            mut conn,
            id,
            from_ms,
            to_ms,
        } = self;
        // The citizen portal's certificate unless another was named.
        if conn.as_ == "portal" && conn.cert.is_none() {
            conn.as_ = "citizen".into();
        }
        let report = CitizenAccessClient::new(connect(&conn.addr, &conn.certs()).await?)
            .access_report(pb::AccessReportRequest {
                personal_id: id,
                from_unix_ms: from_ms,
                to_unix_ms: to_ms,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        show(conn.json, &report, display::access_report)
    }
}
