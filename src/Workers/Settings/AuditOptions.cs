namespace SEmigrate.Workers.Settings;

/// <summary>The auditor's queues: <see cref="Partitions"/> of them named after <see cref="Queue"/>, one set
/// per deployment (every event is appended once); tests use their own. Every host sends its events
/// there, so every host must be given the same two values (see AuditRoute).</summary>
public sealed record AuditOptions
{
    public const string Section = "Audit";

    public string Queue { get; init; } = "semigrate-audit";

    public int Partitions { get; init; } = 8;
}
