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

/// The instances' specs: `base` (ComfyUI's, with its user and environment) once per card.
pub fn specs(base: &ChildSpec, comfyui: &ComfyUi, extra: &[OsString], cards: &[InstanceCard]) -> Vec<InstanceSpec> {
    cards
        .iter()
        .enumerate()
        .map(|(i, card)| {
            let port = comfyui.port.saturating_add(i as u16);
            let mut spec = base.clone();
            // One terminal, one foreground group: the first instance's.
            spec.terminal = i == 0;
            spec.env_set.push(("CUDA_VISIBLE_DEVICES".into(), card.visible.clone().into()));
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
        .collect()
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

/// The instances PID 1 published (empty: one ComfyUI, on COMFYUI_PORT).
pub fn read(dir: &Path) -> Vec<Published> {
    let Ok(Some(raw)) = fsutil::read_bounded(&dir.join(FILE), 64 * 1024, Links::Refuse) else { return Vec::new() };
    String::from_utf8_lossy(&raw).lines().filter_map(parse).collect()
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
        let specs = specs(&base, &comfyui, &["--fast".into()], &[card(0), card(3)]);
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
        assert!(specs[0].spec.terminal && !specs[1].spec.terminal);
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
        let read_back = read(&dir);
        assert_eq!(read_back[1].label, "GPU 2 (b c, GPU-2)");
        assert_eq!(read_back.len(), 2);
        publish(&dir, &list[..1]).unwrap();
        assert!(read(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
