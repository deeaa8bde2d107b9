//! `hull template`: the templates sandboxes start from (`hull_runtime::template`): list them,
//! make one ahead of the first sandbox that would, remove them.

use std::process::ExitCode;

use anyhow::{bail, Context};
use hull_runtime::config::RuntimeConfig;
use hull_runtime::sandbox::{template_spec, SandboxOptions};
use hull_runtime::template;

#[derive(clap::Args, Debug)]
pub struct Template {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// List the templates: key, vCPUs, memory, NICs, when made, how long the boot and the
    /// snapshot took, and whether it fits the current kernel, initramfs and hull-vmm.
    List,
    /// Make the template a sandbox of this shape starts from (the first such sandbox would).
    Build {
        /// vCPUs (default: the configuration's).
        #[arg(long)]
        vcpus: Option<u32>,
        /// Guest memory in MiB (default: the configuration's).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// NICs (a container with a network of its own has one).
        #[arg(long, default_value_t = 1)]
        nics: usize,
    },
    /// Remove the templates named by key, or every one (--all), or those that no longer fit
    /// (--stale). Sandboxes restored from one keep running.
    Rm {
        keys: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        stale: bool,
    },
}

pub fn run(t: &Template) -> anyhow::Result<ExitCode> {
    let config = RuntimeConfig::load()?;
    match &t.cmd {
        Cmd::List => {
            println!(
                "{:<32}  {:>5}  {:>7}  {:>4}  {:>10}  {:>9}  {:>11}  FITS",
                "KEY", "VCPUS", "MEM MIB", "NICS", "MADE", "BOOT MS", "SNAPSHOT MS"
            );
            for (t, fits) in template::list(&config)? {
                let m = &t.meta;
                println!(
                    "{:<32}  {:>5}  {:>7}  {:>4}  {:>10}  {:>9}  {:>11}  {}",
                    m.key,
                    m.spec.vcpus,
                    m.spec.memory_mib,
                    m.spec.net_mtus.len(),
                    m.made,
                    m.boot_ms,
                    m.snapshot_ms,
                    if fits { "yes" } else { "no (stale)" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Build {
            vcpus,
            memory_mib,
            nics,
        } => {
            let spec = template_spec(
                &config,
                &SandboxOptions::default(),
                vcpus.unwrap_or(config.vcpus),
                memory_mib.unwrap_or(config.memory_mib),
                vec![None; *nics],
            )?;
            let t = super::block_on(template::ensure(&config, &spec))?
                .with_context(|| format!("template {}", spec.key()))?;
            println!("{}", t.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rm { keys, all, stale } => {
            if keys.is_empty() && !all && !stale {
                bail!("name the templates to remove, or --all, or --stale");
            }
            let mut chosen = keys.clone();
            for (t, fits) in template::list(&config)? {
                if (*all || (*stale && !fits)) && !chosen.contains(&t.meta.key) {
                    chosen.push(t.meta.key);
                }
            }
            for key in chosen {
                if !super::block_on(template::remove(&config, &key))?? {
                    bail!("no template {key}");
                }
                println!("removed {key}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
