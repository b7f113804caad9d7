namespace SEmigrate.Contracts;

/// <summary>How a migration protects pages. The wire names (<see cref="MigrationModes"/>) appear on the
/// command line, in events and in workflow inputs; the numbers are page-protocol wire format.</summary>
public enum MigrationMode
{
    /// <summary>Selective sealing at the source; sub-hosts never decrypt.</summary>
    Semigrate = 0,

    /// <summary>The original paper's baseline: everything encrypted on a channel the sub-host decrypts
    /// and re-encrypts at rest with its own key.</summary>
    AllEnc = 1,

    /// <summary>No encryption, for comparison.</summary>
    NoEnc = 2,
}

public static class MigrationModes
{
    public static IReadOnlyList<string> WireNames { get; } = ["semigrate", "allenc", "noenc"];

    public static string ToWireName(this MigrationMode mode) => mode switch
    {
        MigrationMode.Semigrate => "semigrate",
        MigrationMode.AllEnc => "allenc",
        MigrationMode.NoEnc => "noenc",
        _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, "unknown migration mode"),
    };

    public static MigrationMode Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "semigrate" => MigrationMode.Semigrate,
        "allenc" => MigrationMode.AllEnc,
        "noenc" => MigrationMode.NoEnc,
        _ => throw new FormatException($"unknown migration mode '{name}': expected one of {string.Join(", ", WireNames)}"),
    };
}
