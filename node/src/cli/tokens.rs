//! `ringkv auth add|ls|rm`: the cluster's client access tokens.
//!
//! `add` makes the token here, on the client: an id (8 random lower-case
//! letters and digits unless `--id`), a secret of 32 random bytes from the
//! operating system, and sends the cluster only the id, role, key prefix,
//! name and the secret's SHA-256 (see [`ringkv_core::access`]). The token
//! is printed once; nobody can print it again. `add` and `rm` go to the
//! placement controller (found from any node's status, as `node drain`
//! finds it) and return once the change is committed; every node then
//! checks tokens against it. `ls` asks any node.
//!
//! The first token must be an admin token: adding it turns authentication
//! on, and from then on every command needs `--token` (or `RINGKV_TOKEN`),
//! `auth` included (an admin token).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use ringkv_core::access::{self, Role};
use ringkv_proto::v1 as pb;

use super::OutputFormat;
use super::client::{ClientOpts, connect_first};
use super::failure::{ErrorCode, Failure, Op};
use super::table::{Align, Table};

/// How long `add` and `rm` keep looking for the controller.
const FIND_CONTROLLER_FOR: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// `ringkv auth`: client access tokens.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AuthCommand {
    /// Make a token and add it to the cluster (the first must have --role admin: it turns
    /// authentication on). Prints the token once.
    Add(AddArgs),
    /// List the cluster's tokens (never their secrets).
    Ls(LsArgs),
    /// Revoke a token: every node refuses it from the committed change on.
    Rm(RmArgs),
}

/// A token's role on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    /// Read keys (get, ls, watch) and the cluster's status.
    Read,
    /// Read and write keys.
    Write,
    /// Everything: keys, drains, replica moves, tokens.
    Admin,
}

impl RoleArg {
    fn role(self) -> Role {
        match self {
            RoleArg::Read => Role::Read,
            RoleArg::Write => Role::Write,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct AddArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// What the token may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Confine the token to keys that start with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// A label for people: who or what holds the token.
    #[arg(long, default_value = "")]
    pub name: String,
    /// The token's id (1-32 lower-case letters and digits); random when absent.
    #[arg(long)]
    pub id: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RmArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    /// The id of the token to revoke (the part after `rkv_`, as `ls` shows it).
    pub id: String,
}

/// Runs `ringkv auth ...`.
pub async fn run(a: AuthArgs) -> ExitCode {
    let result = match a.command {
        AuthCommand::Add(add_args) => add(&add_args).await,
        AuthCommand::Ls(ls_args) => ls(&ls_args).await,
        AuthCommand::Rm(rm_args) => rm(&rm_args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.line());
            ExitCode::from(failure.exit)
        }
    }
}

/// `n` random bytes from the operating system.
fn random_bytes<const N: usize>() -> Result<[u8; N], Failure> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| {
        Failure::new(
            ErrorCode::Internal,
            Op::Write,
            format!("the operating system gave no random bytes: {e}"),
        )
    })?;
    Ok(bytes)
}

/// A random token id: 8 of `[a-z0-9]`.
fn random_id() -> Result<String, Failure> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    Ok(random_bytes::<8>()?
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

async fn add(a: &AddArgs) -> Result<(), Failure> {
    let bad = |m: String| Failure::new(ErrorCode::BadInput, Op::Write, m);
    let id = match &a.id {
        Some(id) => id.clone(),
        None => random_id()?,
    };
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let record = access::TokenRecord {
        name: a.name.clone(),
        role: a.role.role(),
        scope: Bytes::from(a.prefix.clone().into_bytes()),
        secret_hash: access::hash_secret(&secret),
    };
    record.validate(&id).map_err(|e| bad(e.to_string()))?;
    let token = format!("{}{id}_{secret}", access::TOKEN_PREFIX);
    let request = pb::AddTokenRequest {
        token: Some(ringkv_core::metadata::token_to_proto(&id, &record)),
    };
    on_controller(&a.opts, Op::Write, |mut client| {
        let request = request.clone();
        async move { client.add_token(request).await.map(|_| ()) }
    })
    .await?;
    match a.opts.output {
        OutputFormat::Table => {
            println!("{token}");
            eprintln!(
                "token {id} added (role {}, keys {}); it is shown once: the cluster keeps only \
                 its hash",
                record.role,
                keys_of(&a.prefix)
            );
        }
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "token": token,
                "id": id,
                "role": record.role.as_str(),
                "prefix": a.prefix,
                "name": a.name,
            })
        ),
    }
    Ok(())
}

fn keys_of(prefix: &str) -> String {
    if prefix.is_empty() {
        "all".to_owned()
    } else {
        format!("under {prefix:?}")
    }
}

async fn rm(a: &RmArgs) -> Result<(), Failure> {
    let request = pb::RemoveTokenRequest { id: a.id.clone() };
    // Asked again (the controller changed, or the first answer was "not
    // committed yet"), a token that is gone is one this command removed.
    let asked = std::sync::atomic::AtomicBool::new(false);
    on_controller(&a.opts, Op::Write, |mut client| {
        let request = request.clone();
        let again = asked.swap(true, std::sync::atomic::Ordering::Relaxed);
        async move {
            match client.remove_token(request).await {
                Err(s) if again && s.code() == tonic::Code::NotFound => Ok(()),
                other => other.map(|_| ()),
            }
        }
    })
    .await?;
    match a.opts.output {
        OutputFormat::Table => println!("token {} revoked", a.id),
        OutputFormat::Json => println!("{}", serde_json::json!({ "revoked": a.id })),
    }
    Ok(())
}

async fn ls(a: &LsArgs) -> Result<(), Failure> {
    let (channel, _) = connect_first(&a.opts.endpoints, Op::Read).await?;
    let mut client = super::auth::cluster(channel);
    let call = client.list_tokens(pb::ListTokensRequest {});
    let reply = tokio::time::timeout(a.opts.timeout, call)
        .await
        .map_err(|_| {
            Failure::new(
                ErrorCode::ClientTimeout,
                Op::Read,
                format!("no answer within {:?}", a.opts.timeout),
            )
        })?
        .map_err(|s| Failure::from_status(&s, Op::Read))?
        .into_inner();
    let role = |t: &pb::AccessToken| {
        pb::AccessRole::try_from(t.role)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("ACCESS_ROLE_")
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    match a.opts.output {
        OutputFormat::Table => {
            let mut table = Table::new(&[
                ("ID", Align::Left),
                ("ROLE", Align::Left),
                ("KEYS", Align::Left),
                ("NAME", Align::Left),
            ]);
            for t in &reply.tokens {
                let prefix = String::from_utf8_lossy(&t.scope);
                table.row(vec![
                    t.id.clone(),
                    role(t),
                    keys_of(&prefix),
                    t.name.clone(),
                ]);
            }
            print!("{}", table.render());
            if reply.tokens.is_empty() {
                println!("(no tokens: authentication is off)");
            }
        }
        OutputFormat::Json => {
            let tokens: Vec<_> = reply
                .tokens
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "id": t.id,
                        "role": role(t),
                        "prefix": String::from_utf8_lossy(&t.scope),
                        "name": t.name,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({ "tokens": tokens, "metadata_version": reply.version })
            );
        }
    }
    Ok(())
}

/// Runs `call` on the placement controller, finding it again while it
/// moves (or is not known yet), for up to [`FIND_CONTROLLER_FOR`].
async fn on_controller<F, Fut>(opts: &ClientOpts, op: Op, call: F) -> Result<(), Failure>
where
    F: Fn(pb::cluster_client::ClusterClient<super::auth::Authed>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + FIND_CONTROLLER_FOR;
    loop {
        let channel = match super::admin::find_controller(opts).await {
            Ok((channel, _)) => channel,
            // Refused for want of a token: no retry helps.
            Err(f) if f.exit == super::exit::NOT_ALLOWED => return Err(f),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(f) => return Err(f),
        };
        let answer = tokio::time::timeout(opts.timeout, call(super::auth::cluster(channel))).await;
        match answer {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Unavailable
                ) && (status
                    .message()
                    .contains("does not run the placement controller")
                    || status.message().contains("retry shortly")
                    || status.message().contains("ask again"))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL).await;
            }
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(Failure::new(
                    ErrorCode::PreconditionFailed,
                    op,
                    status.message().to_owned(),
                ));
            }
            Ok(Err(status)) => return Err(Failure::from_status(&status, op)),
            Err(_) => {
                return Err(Failure::new(
                    ErrorCode::ClientTimeout,
                    op,
                    format!("the controller did not answer within {:?}", opts.timeout),
                ));
            }
        }
    }
}
