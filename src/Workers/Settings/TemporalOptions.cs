namespace SEmigrate.Workers.Settings;

/// <summary>A Temporal server; when no address is set, migrations run on the embedded engine.</summary>
public sealed record TemporalOptions
{
    public const string Section = "Temporal";

    /// <summary>host:port of the Temporal frontend, or empty.</summary>
    public string? Address { get; init; }

    public string Namespace { get; init; } = "default";

    public bool IsConfigured => !string.IsNullOrWhiteSpace(Address);
}
