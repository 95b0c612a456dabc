//! Decoding a 1 MiB Event Hub message body of `DeviceProcessEvents` records, three ways:
//! the floor (`serde_json` skipping everything), zero-copy routing, and full typed decode.
//! After criterion's report, prints routing and typed decode as ratios to the floor, measured
//! in the same run (targets: routing >= 0.70, typed >= 0.35).
//!
//! Runs on mimalloc, the faster allocator for typed decoding (mostly small string allocations;
//! glibc's malloc spends about a quarter of it in free-list upkeep and in handing pages back to
//! the kernel). An application decoding every column may want it; the forwarder, which only
//! routes, stays on the system allocator for its memory. To compare, remove the
//! `global_allocator` item; `docs/performance.md` gives both figures.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use defender_schema::{Record, split_body};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A realistic `DeviceProcessEvents` record; `i` varies ids, times, names and hashes.
fn record(i: usize) -> String {
    let sec = i % 60;
    let frac = 1_000_000 + i * 7919 % 8_999_999;
    let hash = format!("{:040x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c));
    let additional = if i.is_multiple_of(3) {
        "null".to_owned()
    } else {
        format!(
            r#""{{\"ProcessStartKey\":{},\"IsProcessTokenElevated\":false}}""#,
            844_424_930_132_000 + i
        )
    };
    format!(
        concat!(
            r#"{{"time":"2024-05-14T09:31:{sec:02}.{frac:07}Z","tenantId":"5f2b6a1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b","operationName":"Publish","category":"AdvancedHunting-DeviceProcessEvents","_TimeReceivedBySvc":"2024-05-14T09:31:{sec:02}.{frac:07}Z","properties":{{"#,
            r#""Timestamp":"2024-05-14T09:30:{sec:02}.{frac:07}Z","DeviceId":"{hash}","DeviceName":"ws-{i:05}.corp.example.com","ActionType":"ProcessCreated","#,
            r#""FileName":"powershell.exe","FolderPath":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe","SHA1":"{hash}","SHA256":"{hash}{h24}","MD5":"{h32}","FileSize":{size},"#,
            r#""ProcessVersionInfoCompanyName":"Microsoft Corporation","ProcessVersionInfoProductName":"Microsoft® Windows® Operating System","ProcessVersionInfoProductVersion":"10.0.19041.3996","ProcessVersionInfoInternalFileName":"POWERSHELL","ProcessVersionInfoOriginalFileName":"PowerShell.EXE","ProcessVersionInfoFileDescription":"Windows PowerShell","#,
            r#""ProcessId":{pid},"ProcessCommandLine":"powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\\ProgramData\\scripts\\inventory-{i}.ps1","ProcessIntegrityLevel":"High","ProcessTokenElevation":"TokenElevationTypeFull","ProcessCreationTime":"2024-05-14T09:30:{sec:02}.{frac:07}Z","#,
            r#""AccountDomain":"corp","AccountName":"svc-inventory","AccountSid":"S-1-5-21-1004336348-1177238915-682003330-{rid}","AccountUpn":"svc-inventory@corp.example.com","AccountObjectId":"0c9e6b1a-7d42-4f7e-9a61-{h12}","LogonId":{logon},"#,
            r#""InitiatingProcessAccountDomain":"nt authority","InitiatingProcessAccountName":"system","InitiatingProcessAccountSid":"S-1-5-18","InitiatingProcessAccountUpn":null,"InitiatingProcessAccountObjectId":null,"InitiatingProcessLogonId":999,"#,
            r#""InitiatingProcessIntegrityLevel":"System","InitiatingProcessTokenElevation":"TokenElevationTypeDefault","InitiatingProcessSHA1":"{hash}","InitiatingProcessSHA256":"{hash}{h24}","InitiatingProcessMD5":"{h32}","#,
            r#""InitiatingProcessFileName":"svchost.exe","InitiatingProcessFileSize":55320,"InitiatingProcessVersionInfoCompanyName":"Microsoft Corporation","InitiatingProcessVersionInfoProductName":"Microsoft® Windows® Operating System","InitiatingProcessVersionInfoProductVersion":"10.0.19041.3996","InitiatingProcessVersionInfoInternalFileName":"svchost.exe","InitiatingProcessVersionInfoOriginalFileName":"svchost.exe","InitiatingProcessVersionInfoFileDescription":"Host Process for Windows Services","#,
            r#""InitiatingProcessId":{ppid},"InitiatingProcessCommandLine":"svchost.exe -k netsvcs -p -s Schedule","InitiatingProcessCreationTime":"2024-05-13T06:12:44.1029384Z","InitiatingProcessFolderPath":"c:\\windows\\system32\\svchost.exe","#,
            r#""InitiatingProcessParentId":812,"InitiatingProcessParentFileName":"services.exe","InitiatingProcessParentCreationTime":"2024-05-13T06:12:40.5512093Z","InitiatingProcessSignerType":"OsVendor","InitiatingProcessSignatureStatus":"Valid","#,
            r#""ReportId":{report},"AppGuardContainerId":"","AdditionalFields":{additional},"InitiatingProcessSessionId":0,"IsInitiatingProcessRemoteSession":false,"InitiatingProcessRemoteSessionDeviceName":null,"InitiatingProcessRemoteSessionIP":null,"#,
            r#""CreatedProcessSessionId":0,"IsProcessRemoteSession":false,"ProcessRemoteSessionDeviceName":null,"ProcessRemoteSessionIP":null,"InitiatingProcessUniqueId":"{unique}","ProcessUniqueId":"{unique2}","MachineGroup":"Workstations"}}}}"#
        ),
        sec = sec,
        frac = frac,
        hash = hash,
        h24 = &hash[..24],
        h32 = &hash[..32],
        h12 = &hash[..12],
        i = i,
        size = 450_000 + i % 1000,
        pid = 4000 + i % 60_000,
        ppid = 1200 + i % 300,
        rid = 1100 + i % 500,
        logon = 0x3e7 + i,
        report = 10_000 + i,
        additional = additional,
        unique = 281_474_976_710_656 + i,
        unique2 = 281_474_976_720_656 + i,
    )
}

/// `{"records":[...]}` of about `target` bytes.
fn body(target: usize) -> Vec<u8> {
    let mut out = String::from(r#"{"records":["#);
    let mut i = 0;
    while out.len() < target {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&record(i));
        i += 1;
    }
    out.push_str("]}");
    out.into_bytes()
}

fn floor(body: &[u8]) {
    black_box(serde_json::from_slice::<serde::de::IgnoredAny>(body).unwrap());
}

fn route(body: &[u8]) {
    for r in split_body(body).unwrap() {
        let r = r.unwrap();
        black_box((r.table(), r.raw().len()));
    }
}

fn typed(body: &[u8]) {
    black_box(Record::from_body(body).unwrap());
}

/// Best-of timing, so the ratios printed at the end come from one run on one machine.
fn best_of(f: fn(&[u8]), body: &[u8], for_at_least: Duration) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    while start.elapsed() < for_at_least {
        let t = Instant::now();
        f(body);
        best = best.min(t.elapsed());
    }
    best
}

fn main() {
    let body = body(1 << 20);
    let records = split_body(&body).unwrap().len();
    let mut c = Criterion::default().configure_from_args();
    {
        let mut group = c.benchmark_group(format!("1MiB_DeviceProcessEvents_{records}_records"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("floor_serde_json_ignored_any", |b| b.iter(|| floor(&body)));
        group.bench_function("route_zero_copy", |b| b.iter(|| route(&body)));
        group.bench_function("decode_typed", |b| b.iter(|| typed(&body)));
        group.finish();
    }
    c.final_summary();
    if std::env::args().any(|a| a == "--profile-time" || a == "--list") {
        return; // profiling or listing: no ratio run
    }

    let window = Duration::from_secs(2);
    let f = best_of(floor, &body, window).as_secs_f64();
    let r = best_of(route, &body, window).as_secs_f64();
    let t = best_of(typed, &body, window).as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // a 1 MiB length is exact in f64
    let mib = body.len() as f64 / f64::from(1 << 20);
    println!("\n{records} records, {} bytes", body.len());
    println!("floor  (IgnoredAny)  {:8.1} MiB/s", mib / f);
    println!(
        "route  (zero-copy)   {:8.1} MiB/s  = {:.2} of the floor (target >= 0.70)",
        mib / r,
        f / r
    );
    println!(
        "typed  (full decode) {:8.1} MiB/s  = {:.2} of the floor (target >= 0.35)",
        mib / t,
        f / t
    );
}
