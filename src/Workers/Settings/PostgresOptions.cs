namespace SEmigrate.Workers.Settings;

/// <summary>PostgreSQL that holds the Marten event store (the audit trail).</summary>
public sealed record PostgresOptions
{
    public const string Section = "Postgres";

    public string ConnectionString { get; init; } = "";

    /// <summary>Schema for Marten's tables; tests use one per class.</summary>
    public string Schema { get; init; } = "semigrate";
}
