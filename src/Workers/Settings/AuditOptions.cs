namespace SEmigrate.Workers.Settings;

/// <summary>The auditor's queue: one per deployment (every event is appended once); tests use their own.</summary>
public sealed record AuditOptions
{
    public const string Section = "Audit";

    public string Queue { get; init; } = "semigrate-audit";
}
