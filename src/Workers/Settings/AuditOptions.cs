namespace SEmigrate.Workers.Settings;

/// <summary>The auditor's queues: <see cref="Partitions"/> of them named after <see cref="Queue"/>, one set
/// per deployment (every event is appended once); tests use their own. Every host sends its events
/// there, so every host must be given the same two values (see AuditRoute).
/// <see cref="KeyFile"/>: the auditor's signing key (ECDSA P-256, 0600, made on first use where an
/// orchestrator runs), which seals every event appended and signs what the control plane sends; kept
/// outside PostgreSQL, so the database's owner cannot re-seal a stream. <see cref="TrustedKeys"/>: the
/// public halves (base64) of other orchestrators' keys, where several machines run one.
/// <see cref="HeadsFolder"/>: where the auditor keeps the last event it appended to each stream, outside
/// PostgreSQL, so `semigrate audit` there sees a stream cut short.</summary>
public sealed record AuditOptions
{
    public const string Section = "Audit";

    public string Queue { get; init; } = "semigrate-audit";

    public int Partitions { get; init; } = 8;

    public string KeyFile { get; init; } = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config", "semigrate", "auditor.key");

    public IReadOnlyList<string> TrustedKeys { get; init; } = [];

    public string HeadsFolder { get; init; } = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "state", "semigrate", "audit-heads");
}
