//! The `tenant-migrator` binary: `migrate` (the CLI shell), `crd`, and `controller`.

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use tenant_migrator::api::{RagStack, TenantMigration};
use tenant_migrator::cli::{self, MigrateArgs};
use tenant_migrator::telemetry;

#[derive(Parser)]
#[command(
    name = "tenant-migrator",
    version,
    about = "Move one tenant's data to a new tenant id"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate a tenant without Kubernetes (flag-compatible with migrate_tenant.py).
    Migrate(Box<MigrateArgs>),
    /// Print the CustomResourceDefinitions (TenantMigration, RagStack) as YAML.
    Crd {
        /// Only this one.
        #[arg(value_enum)]
        kind: Option<CrdKind>,
    },
    /// Run the operator: reconcile TenantMigrations through the engine.
    Controller {
        /// Watch only these namespaces (repeat the flag or separate with commas;
        /// default: all).
        #[arg(long = "namespace", value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Serve /metrics, /healthz and /readyz here.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_addr: std::net::SocketAddr,
        /// Take part in leader election on a Lease in this namespace
        /// [default: $POD_NAMESPACE; without either, no election].
        #[arg(long, env = "POD_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Seconds a leader holds the Lease without renewing it (at least 5; renewed every
        /// third of it).
        #[arg(long, default_value_t = 15)]
        lease_seconds: u64,
        /// The operator's own namespace, the only one where the Secrets of RagStacks
        /// are read [default: $POD_NAMESPACE].
        #[arg(long, env = "POD_NAMESPACE")]
        secrets_namespace: Option<String>,
        /// Also run migrations without spec.stackRef, whose inline endpoints and Secret
        /// references (in the migration's namespace) are used as they are. Only for
        /// clusters where whoever may create a migration may also read those Secrets.
        #[arg(long)]
        allow_inline_endpoints: bool,
        /// Migrations this controller runs at once; the others wait as Pending
        /// (WaitingForCapacity).
        #[arg(long, default_value_t = 4)]
        max_concurrent_migrations: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdKind {
    Tenantmigration,
    Ragstack,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Migrate(args) => {
            telemetry::init("warn");
            cli::migrate(*args).await
        }
        Command::Crd { kind } => {
            let crds = match kind {
                Some(CrdKind::Tenantmigration) => vec![TenantMigration::crd()],
                Some(CrdKind::Ragstack) => vec![RagStack::crd()],
                None => vec![TenantMigration::crd(), RagStack::crd()],
            };
            let yaml: Result<Vec<String>, _> = crds.iter().map(serde_yaml::to_string).collect();
            match yaml {
                Ok(docs) => {
                    print!("{}", docs.join("---\n"));
                    0
                }
                Err(e) => {
                    eprintln!("error: cannot render the CRDs: {e}");
                    1
                }
            }
        }
        Command::Controller {
            namespaces,
            metrics_addr,
            lease_namespace,
            lease_seconds,
            secrets_namespace,
            allow_inline_endpoints,
            max_concurrent_migrations,
        } => {
            telemetry::init("info");
            match kube::Client::try_default().await {
                Ok(client) => {
                    let options = tenant_migrator::controller::Options {
                        namespaces,
                        endpoints: Some(metrics_addr),
                        lease_namespace,
                        lease_seconds,
                        allow_inline_endpoints,
                        secrets_namespace,
                        max_running: max_concurrent_migrations,
                    };
                    match tenant_migrator::controller::run_elected(client, options).await {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("error: {e}");
                            1
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: cannot reach the Kubernetes API: {e}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
