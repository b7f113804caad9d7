namespace SEmigrate.Workers.Settings;

/// <summary>How often a host worker reports itself to the fleet inventory (HostSeen).</summary>
public sealed record FleetOptions
{
    public const string Section = "Fleet";

    public int ReportSeconds { get; init; } = 30;
}
