//! Elastic-compatible call-stack facts of an alert: what Elastic Defend
//! calls `process.thread.Ext.call_stack_summary`,
//! `call_stack_contains_unbacked`, `call_stack_final_user_module` and
//! `process.Ext.api.behaviors`, so that hunts written for Elastic's API
//! events run on our alerts unchanged. Names and types follow the endpoint
//! package's field definitions (elastic/endpoint-package,
//! `package/endpoint/data_stream/api/fields/fields.yml`; the subset used is
//! vendored in `tests/data/elastic-endpoint-call-stack-fields.json`). The
//! mapping is documented in docs/verdicts.md, "Elastic-compatible fields".

use serde::Serialize;
use serde_json::{json, Value};

use crate::classify::{Reason, Verdict};
use crate::state::Module;
use std::sync::Arc;

use sentry_images::Images;

use crate::SyscallVerdict;

/// Elastic's `ignore_above` for these keywords: a longer summary is cut at
/// a module boundary.
const MAX_SUMMARY: usize = 1024;

/// The call-stack facts of an alert's first syscall.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CallStackFacts {
    /// Index of `U` in the stack (the user part starts there).
    #[serde(skip)]
    pub user_index: usize,
    /// User-mode modules innermost first, repeats in a row collapsed,
    /// `Unbacked` for memory no image backs, e.g.
    /// `ntdll.dll|kernelbase.dll|Unbacked`.
    pub call_stack_summary: String,
    pub call_stack_contains_unbacked: bool,
    /// The innermost user frame outside the Windows directories'
    /// System32/SysWOW64 (`Unbacked` when that frame is private memory,
    /// `Undetermined` when every frame is a system module).
    pub final_user_module: FinalUserModule,
    /// Rule 9's frame, with the bytes around its return address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_check: Option<ReturnEvidence>,
    /// Rule 8b's handler frame (`exception_handler`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception_handler: Option<HandlerEvidence>,
    /// The `truncated_stack` flag (docs/verdicts.md, "Flags").
    #[serde(skip)]
    pub truncated: bool,
    /// PE identity of `U`'s module, as an allowlist `identity` names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_identity: Option<PeIdentity>,
}

/// A module's PE identity (from its Image event).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeIdentity {
    pub name: String,
    pub time_date_stamp: String,
    pub size_of_image: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FinalUserModule {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SHA-256 of the matched `--images` file (none offline otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The frame no call precedes (rule 9).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReturnEvidence {
    /// Index in `stack`.
    pub frame: usize,
    pub instruction_pointer: String,
    /// Lower-case hex, up to 16 bytes each side of the return address.
    pub leading_bytes: String,
    pub trailing_bytes: String,
    /// The gadget shape at the return address (`jmp_memory`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gadget: Option<&'static str>,
}

/// The handler an exception dispatch called (rule 8b), in private memory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HandlerEvidence {
    /// Index in `stack` of the handler's frame.
    pub frame: usize,
    /// Its return address (in no module).
    pub address: String,
    /// Index in `stack` of the `KiUserExceptionDispatcher` frame, and it.
    pub dispatcher_frame: usize,
    pub dispatcher: String,
}

fn system_module(m: &Module) -> bool {
    let p = m.path.to_ascii_lowercase();
    p.contains("\\windows\\system32\\") || p.contains("\\windows\\syswow64\\")
}

/// Per interned module: what the facts need at render time.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    path: Arc<str>,
    system: bool,
    /// Its `--images` file (hashed only if written as a final user module).
    image: Option<Arc<sentry_images::Image>>,
}

impl ModuleInfo {
    pub fn of(m: &Module, images: Option<&Images>) -> ModuleInfo {
        ModuleInfo {
            path: Arc::clone(&m.path),
            system: system_module(m),
            image: images.zip(m.image).and_then(|(i, ix)| i.image(ix).ok()),
        }
    }
}

/// What is taken when the syscall is seen (cheap: most deferred groups
/// settle as normal and are never written); the rest comes from the
/// evidence's frames when the alert is written.
#[derive(Debug, Clone)]
pub struct Pending {
    user_index: usize,
    truncated: bool,
    return_check: Option<ReturnEvidence>,
    exception_handler: Option<HandlerEvidence>,
    module_identity: Option<(u32, u64)>,
}

/// The pending facts of `v`'s stack, if it has user frames.
pub fn pending(v: &SyscallVerdict<'_>) -> Option<Pending> {
    let ui = v.outcome.user_index?;
    let r = &v.resolver;
    let return_check = v.outcome.frame_check.and_then(|f| {
        let a = *v.stack.get(f.index)?;
        let m = r.module_of(a)?;
        let img = v.images?.image(m.image?).ok()?;
        let rva = u32::try_from(a - m.base).ok()?;
        Some(ReturnEvidence {
            frame: f.index,
            instruction_pointer: format!("{a:#x}"),
            leading_bytes: img.hex_around(rva, true),
            trailing_bytes: img.hex_around(rva, false),
            gadget: f.gadget.map(|g| g.as_str()),
        })
    });
    let exception_handler = v.outcome.handler.filter(|h| h.unbacked).and_then(|h| {
        let (f, df) = (h.handler as usize, h.dispatcher as usize);
        let (a, d) = (*v.stack.get(f)?, *v.stack.get(df)?);
        Some(HandlerEvidence {
            frame: f,
            address: format!("{a:#x}"),
            dispatcher_frame: df,
            dispatcher: r.describe(d),
        })
    });
    Some(Pending {
        exception_handler,
        user_index: ui,
        truncated: crate::classify::stack_truncated(r.modules, v.stack, r.kernel_boundary),
        return_check,
        module_identity: v.outcome.user_module.map(|m| (m.time_date_stamp, m.size)),
    })
}

/// The facts of an alert from its pending part and its evidence frames
/// (`module` indexes `names`/`info`; `u32::MAX`: unbacked).
pub fn facts(
    p: &Pending,
    frames: &[super::FrameRef],
    names: &[Arc<str>],
    info: &[ModuleInfo],
) -> CallStackFacts {
    let mut summary = String::new();
    let mut last: Option<u32> = None;
    let mut unbacked = false;
    let mut final_user: Option<FinalUserModule> = None;
    let user = frames.get(p.user_index..).unwrap_or(&[]);
    for f in user {
        let (name, inf) = match (names.get(f.module as usize), info.get(f.module as usize)) {
            (Some(n), Some(i)) => (n.to_ascii_lowercase(), Some(i)),
            _ => {
                unbacked = true;
                ("Unbacked".to_string(), None)
            }
        };
        if final_user.is_none() && !inf.is_some_and(|i| i.system) {
            final_user = Some(FinalUserModule {
                name: name.clone(),
                path: inf.map(|i| i.path.to_string()),
                sha256: inf.and_then(|i| i.image.as_ref().map(|img| img.sha256_hex())),
            });
        }
        let key = if inf.is_some() { f.module } else { u32::MAX };
        if last == Some(key) && !summary.is_empty() {
            continue;
        }
        if summary.len() + name.len() + 1 > MAX_SUMMARY {
            break;
        }
        if !summary.is_empty() {
            summary.push('|');
        }
        summary.push_str(&name);
        last = Some(key);
    }
    let module_identity = user.first().and_then(|f| {
        let (tds, size) = p.module_identity?;
        Some(PeIdentity {
            name: names.get(f.module as usize)?.to_string(),
            time_date_stamp: format!("{tds:#x}"),
            size_of_image: format!("{size:#x}"),
        })
    });
    CallStackFacts {
        truncated: p.truncated,
        module_identity,
        user_index: p.user_index,
        call_stack_summary: summary,
        call_stack_contains_unbacked: unbacked,
        final_user_module: final_user.unwrap_or(FinalUserModule {
            name: "Undetermined".into(),
            path: None,
            sha256: None,
        }),
        return_check: p.return_check.clone(),
        exception_handler: p.exception_handler.clone(),
    }
}

/// Elastic's `process.Ext.api.behaviors` values that a verdict implies
/// (only values whose documented meaning matches; no Elastic value means
/// "indirect syscall").
pub fn behaviors(verdict: Verdict, reason: Option<Reason>, truncated: bool) -> Vec<&'static str> {
    let mut b = match (verdict, reason) {
        (Verdict::Direct, _) => vec!["direct_syscall"],
        (Verdict::Indirect, Some(Reason::NotCallPreceded)) => vec!["image_rop"],
        _ => vec![],
    };
    if truncated {
        b.push("truncated_stack");
    }
    b
}

/// The ECS document's Elastic-compatible part (merged under `process`).
pub fn ecs_process_fields(
    f: &CallStackFacts,
    behaviors: &[&str],
    api_name: Option<&str>,
    stack: &[String],
) -> Value {
    // The user part, as Elastic's API events have it.
    let mut frames: Vec<Value> = stack
        .iter()
        .skip(f.user_index)
        .map(|s| json!({"symbol_info": s}))
        .collect();
    if let Some(rc) = &f.return_check {
        if let Some(fr) = frames.get_mut(rc.frame.wrapping_sub(f.user_index)) {
            fr["instruction_pointer"] = json!(rc.instruction_pointer);
            fr["callsite_leading_bytes"] = json!(rc.leading_bytes);
            fr["callsite_trailing_bytes"] = json!(rc.trailing_bytes);
        }
    }
    let mut fum = json!({"name": f.final_user_module.name});
    if let Some(p) = &f.final_user_module.path {
        fum["path"] = json!(p);
    }
    if let Some(h) = &f.final_user_module.sha256 {
        fum["hash"] = json!({"sha256": h});
    }
    let mut ext = json!({});
    if !behaviors.is_empty() {
        ext["api"] = json!({"behaviors": behaviors});
    }
    if let Some(n) = api_name {
        ext["api"]["name"] = json!(n);
    }
    json!({
        "Ext": ext,
        "thread": {"Ext": {
            "call_stack_summary": f.call_stack_summary,
            "call_stack_contains_unbacked": f.call_stack_contains_unbacked,
            "call_stack_final_user_module": fum,
            "call_stack": frames,
        }},
    })
}
