//! One ComfyUI per GPU under one init (issue 26, `COMFY_INIT_INSTANCES`): how each instance is
//! started, and the list PID 1 publishes for `comfy-init healthcheck` (a `docker exec` that
//! cannot ask NVML again within its deadline, nor know the ports).
//!
//! Instance i listens on `COMFYUI_PORT + i`, sees only its card (`CUDA_VISIBLE_DEVICES`, the
//! UUID: CUDA's own order of indexes may differ from NVML's) and has its own temp folder
//! (`temp/instance-<i>`: ComfyUI empties its temp folder at every start, which would pull files
//! from under a running sibling). Instances after the first get their own user folder
//! (`user/instance-<i>`): newer ComfyUI keeps a locked database there (`user/comfyui.db`), and a
//! second ComfyUI on the same one exits. Models, custom nodes, input and output are shared.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::ComfyUi;
use crate::fsutil::{self, Links};
use crate::gpu::InstanceCard;
use crate::supervisor::child::ChildSpec;
use crate::supervisor::InstanceSpec;

const FILE: &str = "instances";

/// What the healthcheck needs of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub index: usize,
    pub port: u16,
    /// `GPU 1 (NVIDIA GeForce RTX 4090, GPU-...)`.
    pub label: String,
}

/// Instance i's user folder, for instances after the first.
pub fn user_dir(comfyui: &ComfyUi, index: usize) -> Option<PathBuf> {
    (index > 0).then(|| comfyui.dir.join("user").join(format!("instance-{index}")))
}

/// The instances' specs: `base` (ComfyUI's, with its user and environment) once per card. Err:
/// the ports would run past 65535.
pub fn specs(
    base: &ChildSpec,
    comfyui: &ComfyUi,
    extra: &[OsString],
    cards: &[InstanceCard],
) -> Result<Vec<InstanceSpec>, String> {
    let last = u16::try_from(cards.len().saturating_sub(1)).ok().and_then(|n| comfyui.port.checked_add(n));
    if last.is_none() {
        return Err(format!(
            "COMFYUI_PORT={} leaves no room for {} instances (ports COMFYUI_PORT to COMFYUI_PORT+{}): choose a lower port",
            comfyui.port,
            cards.len(),
            cards.len().saturating_sub(1)
        ));
    }
    Ok(cards
        .iter()
        .enumerate()
        .map(|(i, card)| {
            let port = comfyui.port + i as u16;
            let mut spec = base.clone();
            // Several: none takes the terminal, PID 1 keeps it, so that Ctrl-C stops them all.
            spec.terminal = base.terminal && cards.len() == 1;
            spec.env_set.push(("CUDA_VISIBLE_DEVICES".into(), card.visible.clone().into()));
            // The companion then follows ComfyUI-Login's shared cookie key (doors.py).
            spec.env_set.push(("COMFY_INIT_INSTANCE".into(), i.to_string().into()));
            spec.argv = ComfyUi { port, ..comfyui.clone() }.default_command();
            spec.argv.push("--temp-directory".into());
            spec.argv.push(comfyui.dir.join("temp").join(format!("instance-{i}")).into());
            if let Some(user) = user_dir(comfyui, i) {
                spec.argv.push("--user-directory".into());
                spec.argv.push(user.into());
            }
            spec.argv.extend(extra.iter().cloned());
            spec.cwd = Some(comfyui.dir.clone());
            InstanceSpec { spec, port, label: Some(card.label.clone()) }
        })
        .collect())
}

/// Writes the list for the healthcheck in `dir` (root's, like the phase); one instance: no list.
pub fn publish(dir: &Path, instances: &[Published]) -> Result<(), String> {
    if instances.len() <= 1 {
        return match std::fs::remove_file(dir.join(FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        };
    }
    let text: String = instances.iter().map(|p| format!("{} {} {}\n", p.index, p.port, one_line(&p.label))).collect();
    let mut file = crate::supervisor::phase::open_in(dir, c"instances", 0o644)?;
    file.set_len(0).and_then(|()| file.write_all(text.as_bytes())).map_err(|e| e.to_string())
}

/// The instances PID 1 published (empty: none published, one ComfyUI on COMFYUI_PORT). Err: a
/// list is there but cannot be read (a link, too big, unreadable): nothing is known of them.
pub fn read(dir: &Path) -> Result<Vec<Published>, String> {
    let path = dir.join(FILE);
    match fsutil::read_bounded(&path, 64 * 1024, Links::Refuse) {
        Ok(Some(raw)) => Ok(String::from_utf8_lossy(&raw).lines().filter_map(parse).collect()),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn parse(line: &str) -> Option<Published> {
    let mut fields = line.splitn(3, ' ');
    let index = fields.next()?.parse().ok()?;
    let port = fields.next()?.parse().ok()?;
    Some(Published { index, port, label: fields.next()?.to_string() })
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(i: usize) -> InstanceCard {
        InstanceCard { visible: format!("GPU-{i}"), label: format!("GPU {i} (NVIDIA GeForce RTX 4090, GPU-{i})") }
    }

    #[test]
    fn each_instance_gets_its_card_port_and_folders() {
        let comfyui =
            ComfyUi { dir: "/c".into(), port: 8188, args: vec!["--lowvram".into()], python: "python3".into() };
        let base = ChildSpec { terminal: true, ..ChildSpec::default() };
        let specs = specs(&base, &comfyui, &["--fast".into()], &[card(0), card(3)]).unwrap();
        let argv = |i: usize| {
            specs[i].spec.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(
            argv(0),
            "python3 /c/main.py --listen 0.0.0.0 --port 8188 --lowvram --temp-directory /c/temp/instance-0 --fast"
        );
        assert_eq!(
            argv(1),
            "python3 /c/main.py --listen 0.0.0.0 --port 8189 --lowvram --temp-directory /c/temp/instance-1 \
             --user-directory /c/user/instance-1 --fast"
        );
        assert_eq!(specs[1].port, 8189);
        assert!(!specs[0].spec.terminal && !specs[1].spec.terminal, "PID 1 keeps the terminal");
        let one = super::specs(&base, &comfyui, &[], &[card(0)]).unwrap();
        assert!(one[0].spec.terminal, "a single instance takes it as ComfyUI always did");
        let high = ComfyUi { port: 65535, ..comfyui };
        assert!(super::specs(&base, &high, &[], &[card(0), card(1)]).unwrap_err().contains("no room for 2 instances"));
        assert!(specs[1].spec.env_set.contains(&("CUDA_VISIBLE_DEVICES".into(), "GPU-3".into())));
    }

    #[test]
    fn the_list_is_published_and_read_back_and_one_instance_publishes_none() {
        let dir = std::env::temp_dir().join(format!("comfy-init-instances-{}", std::process::id()));
        let list = vec![
            Published { index: 0, port: 8188, label: "GPU 0 (a, GPU-0)".into() },
            Published { index: 1, port: 8189, label: "GPU 2 (b\nc, GPU-2)".into() },
        ];
        publish(&dir, &list).unwrap();
        let read_back = read(&dir).unwrap();
        assert_eq!(read_back[1].label, "GPU 2 (b c, GPU-2)");
        assert_eq!(read_back.len(), 2);
        publish(&dir, &list[..1]).unwrap();
        assert!(read(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
