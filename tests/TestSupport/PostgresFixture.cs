using Marten;
using Npgsql;
using Xunit;

namespace SEmigrate.TestSupport;

/// <summary>The local PostgreSQL, with a schema of its own for each test class that uses it
/// (a class fixture); the schema is dropped afterwards.</summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    public string ConnectionString { get; private set; } = "";

    public string Schema { get; } = $"t_{Guid.NewGuid():N}"[..20];

    public async ValueTask InitializeAsync() =>
        ConnectionString = await ServicesScript.SettingAsync("SEMIGRATE__Postgres__ConnectionString");

    /// <summary>A Marten store in this fixture's schema, creating its tables as needed.</summary>
    public DocumentStore CreateStore(Action<StoreOptions>? configure = null) => DocumentStore.For(o =>
    {
        o.Connection(ConnectionString);
        o.DatabaseSchemaName = Schema;
        configure?.Invoke(o);
    });

    public async ValueTask DisposeAsync()
    {
        if (ConnectionString.Length == 0)
        {
            return;
        }
        await using var connection = new NpgsqlConnection(ConnectionString);
        await connection.OpenAsync();
        await using var drop = new NpgsqlCommand($"DROP SCHEMA IF EXISTS {Schema} CASCADE", connection);
        await drop.ExecuteNonQueryAsync();
    }
}
