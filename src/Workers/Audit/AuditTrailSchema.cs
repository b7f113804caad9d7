using Marten;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Npgsql;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Audit;

/// <summary>Makes the audit trail's schema objects when a process starts, one process at a time: under
/// a PostgreSQL advisory lock that waits (Marten's own lock gives up after a few tries), so processes
/// starting together (an orchestrator and `semigrate migrate`) never both create a table (23505 on
/// pg_type). Objects made here are there before anything appends or reads.</summary>
public sealed class AuditTrailSchema(IDocumentStore store, IOptions<PostgresOptions> postgres) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var o = postgres.Value;
        await using var connection = new NpgsqlConnection(o.ConnectionString);
        await connection.OpenAsync(cancellationToken);
        // A transaction's lock: released when it ends, whatever happens below (a session lock would stay
        // with the pooled connection).
        await using var held = await connection.BeginTransactionAsync(cancellationToken);
        await using (var take = new NpgsqlCommand("SELECT pg_advisory_xact_lock(hashtext($1))", connection, held)
                     { CommandTimeout = 0, Parameters = { new() { Value = $"semigrate-schema:{o.Schema}" } } })
        {
            await take.ExecuteNonQueryAsync(cancellationToken);
        }
        await store.Storage.ApplyAllConfiguredChangesToDatabaseAsync();
        await held.CommitAsync(cancellationToken);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
