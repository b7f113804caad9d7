using Marten;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Settings;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Embedded;

/// <summary>The embedded engine: runs a migration's procedure on <see cref="EmbeddedSteps"/>, journaled
/// in the migration's stream, and resumes one whose orchestrator died by running the procedure again
/// against that journal. One orchestrator drives a migration at a time, and a VM has one migration at a
/// time: the driver holds PostgreSQL advisory locks on the migration and on its VM for as long as it
/// drives it, which the server drops with its connection when the process dies.</summary>
public sealed class EmbeddedEngine(EmbeddedSteps steps, IDocumentStore store, IOptions<PostgresOptions> postgres, ILogger<EmbeddedEngine> logger)
{
    /// <summary>Runs a new migration; <paramref name="running"/> gets the procedure (for its progress).</summary>
    public async Task<MigrationOutcome> RunAsync(MigrationRequest request, Action<MigrationProcedure>? running, CancellationToken ct)
    {
        await using var driving = await TryDriveAsync(request.MigrationId, ct)
            ?? throw new InvalidOperationException($"migration {request.MigrationId} is driven by another orchestrator");
        if (!await TryLockAsync(driving, VmKey(request.Vm), ct))
        {
            await using var query = store.QuerySession();
            var other = (await query.Query<MigrationSummary>().Where(s => s.Vm == request.Vm && s.Open).Select(s => s.Id).ToListAsync(ct)).FirstOrDefault();
            throw new VmBusyException($"VM {request.Vm} is being migrated already{(other == default ? "" : $" (migration {other})")}: one migration of a VM at a time");
        }
        var journal = await steps.JournalAsync(request.MigrationId);
        if (journal.Request is null)
        {
            await journal.AcceptedAsync(request);
        }
        return await DriveAsync(journal, journal.Request!, running, ct);
    }

    /// <summary>Resumes a migration that an orchestrator accepted and did not finish; null if another
    /// orchestrator drives it, or it was never accepted by this engine (a Temporal one, say).</summary>
    public async Task<MigrationOutcome?> ResumeAsync(Guid migrationId, CancellationToken ct)
    {
        await using var driving = await TryDriveAsync(migrationId, ct);
        if (driving is null)
        {
            return null;
        }
        steps.Forget(migrationId); // what another process appended since this one last looked
        var journal = await steps.JournalAsync(migrationId);
        if (journal.Request is null || !await TryLockAsync(driving, VmKey(journal.Request.Vm), ct))
        {
            steps.Forget(migrationId); // not this engine's, or its VM's other migration runs: later
            return null;
        }
        logger.LogWarning("resuming migration {Migration} of VM {Vm}: replaying {Steps} recorded steps", migrationId, journal.Request.Vm, journal.Steps);
        return await DriveAsync(journal, journal.Request, null, ct);
    }

    /// <summary>Migrations this engine took on whose procedure has not returned: what a restarted
    /// orchestrator resumes (a switched-over one too, until the source has let go of the key).</summary>
    public async Task<IReadOnlyList<Guid>> UnfinishedAsync(CancellationToken ct)
    {
        await using var query = store.QuerySession();
        var open = await query.Query<MigrationSummary>().Where(s => s.Open).Select(s => s.Id).ToListAsync(ct);
        return [.. open];
    }

    private async Task<MigrationOutcome> DriveAsync(MigrationJournal journal, MigrationRequest request, Action<MigrationProcedure>? running, CancellationToken ct)
    {
        var procedure = new MigrationProcedure(steps);
        running?.Invoke(procedure);
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (journal.CancelReason is { } reason)
        {
            // Cancelled before the last orchestrator died: undo, as it would have.
            procedure.CancelReason = reason;
            await cancel.CancelAsync();
        }
        await using var onCancel = ct.Register(() =>
        {
            // The reason the journal keeps is the one the procedure gives: a replay gives the same.
            procedure.CancelReason ??= "cancelled by the operator";
            _ = journal.CancelledAsync(procedure.CancelReason);
        });
        try
        {
            var outcome = await procedure.RunAsync(request, cancel.Token);
            await journal.EndedAsync(outcome.State);
            return outcome;
        }
        finally
        {
            steps.Forget(request.MigrationId);
        }
    }

    /// <summary>The migration's lock, held by an open connection; null if another orchestrator holds it.</summary>
    private async Task<NpgsqlConnection?> TryDriveAsync(Guid migrationId, CancellationToken ct)
    {
        var connection = new NpgsqlConnection(LockHolding(postgres.Value.ConnectionString));
        await connection.OpenAsync(ct);
        if (await TryLockAsync(connection, LockKey(migrationId), ct))
        {
            return connection;
        }
        await connection.DisposeAsync();
        return null;
    }

    /// <summary>A connection that holds session locks is not pooled: closing it must end the session, or
    /// its locks would stay with the pooled connection (until Npgsql resets it on its next use, or drops
    /// it minutes later), and other orchestrators would find a finished migration's VM still locked.</summary>
    public static string LockHolding(string connectionString) => new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false }.ConnectionString;

    private static async Task<bool> TryLockAsync(NpgsqlConnection connection, long key, CancellationToken ct)
    {
        await using var command = new NpgsqlCommand("select pg_try_advisory_lock($1)", connection) { Parameters = { new() { Value = key } } };
        return await command.ExecuteScalarAsync(ct) is true;
    }

    /// <summary>A VM's lock key: its id's, in another space than migrations' (a constant mixed in).</summary>
    private static long VmKey(Guid vm) => LockKey(vm) ^ 0x5345_4d56_4d4c_4f43; // "SEMVMLOC"

    /// <summary>A 64-bit key from the id (two migrations sharing one, a 2^-64 chance, would refuse one of them).</summary>
    private static long LockKey(Guid id)
    {
        Span<byte> bytes = stackalloc byte[16];
        id.TryWriteBytes(bytes);
        return BitConverter.ToInt64(bytes) ^ BitConverter.ToInt64(bytes[8..]);
    }
}

/// <summary>A VM that another migration is moving now: refused before anything is recorded.</summary>
public sealed class VmBusyException(string message) : Exception(message);
