using Marten;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Embedded;

/// <summary>Runs the embedded engine's drain schedules in `worker --role orchestrator`: every few seconds
/// it fires the schedules that are due and not paused. One orchestrator fires a run (a PostgreSQL
/// advisory lock on the schedule, held while its drain runs, which also tells a later run that the
/// last one still runs), and the next run is set before the drain starts, so a dead orchestrator never
/// fires one twice.</summary>
public sealed class ScheduleRunner(IDocumentStore store, DrainRunner drains, IOptions<PostgresOptions> postgres, ILogger<ScheduleRunner> logger) : BackgroundService
{
    private static readonly TimeSpan Every = TimeSpan.FromSeconds(5);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Every);
        do
        {
            try
            {
                await RunDueAsync(stoppingToken);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                logger.LogWarning("drain schedules: {Problem}", e.Message);
            }
        }
        while (await timer.WaitForNextTickAsync(stoppingToken));
    }

    /// <summary>Starts every due schedule's drain; returns the runs started (each ends on its own).</summary>
    public async Task<IReadOnlyList<Task>> RunDueAsync(CancellationToken ct)
    {
        var now = DateTimeOffset.UtcNow;
        IReadOnlyList<DrainSchedule> due;
        await using (var query = store.QuerySession())
        {
            due = await query.Query<DrainSchedule>().Where(s => !s.Paused && s.NextRun <= now).ToListAsync(ct);
        }
        var runs = new List<Task>();
        foreach (var schedule in due)
        {
            var connection = new NpgsqlConnection(EmbeddedEngine.LockHolding(postgres.Value.ConnectionString));
            await connection.OpenAsync(ct);
            var locked = await TryLockAsync(connection, schedule.Id, ct);
            var fresh = await ReloadAsync(schedule.Id, ct);
            if (fresh is null || fresh.Paused || fresh.NextRun > now || (!locked && fresh.Overlap == ScheduleOverlap.Skip))
            {
                // Gone, paused, fired by another orchestrator meanwhile, or its last run still runs.
                if (!locked && fresh is { Paused: false } && fresh.NextRun <= now)
                {
                    await SaveAsync(fresh with { NextRun = fresh.NextAfter(now), LastSkip = $"skipped at {now:u}: the last run still runs" }, ct);
                    logger.LogWarning("drain schedule {Schedule}: skipped, its last run still runs", fresh.Id);
                }
                await connection.DisposeAsync();
                continue;
            }
            await SaveAsync(fresh with { NextRun = fresh.NextAfter(now), LastRun = now }, ct);
            logger.LogWarning("drain schedule {Schedule}: draining {Host}", fresh.Id, fresh.Host);
            runs.Add(RunAsync(fresh, connection, ct));
        }
        return runs;
    }

    private async Task RunAsync(DrainSchedule schedule, NpgsqlConnection holding, CancellationToken ct)
    {
        await using var _ = holding;
        DrainReport? report = null;
        string? problem = null;
        try
        {
            // The operator signed the schedule's order when making it: the hosts check it (and its expiry).
            report = await drains.DrainAsync(new DrainHost(Guid.NewGuid(), schedule.Host, schedule.Mode, schedule.PlainProcesses, schedule.MaxConcurrent, schedule.Order), ct);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            problem = e.Message;
        }
        if (await ReloadAsync(schedule.Id, CancellationToken.None) is { } now)
        {
            await SaveAsync(now with { LastReport = report ?? now.LastReport, LastProblem = problem }, CancellationToken.None);
        }
    }

    private async Task<DrainSchedule?> ReloadAsync(string id, CancellationToken ct)
    {
        await using var query = store.QuerySession();
        return await query.LoadAsync<DrainSchedule>(id, ct);
    }

    private async Task SaveAsync(DrainSchedule schedule, CancellationToken ct)
    {
        await using var session = store.LightweightSession();
        session.Store(schedule);
        await session.SaveChangesAsync(ct);
    }

    private static async Task<bool> TryLockAsync(NpgsqlConnection connection, string id, CancellationToken ct)
    {
        var key = BitConverter.ToInt64(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"semigrate-schedule|{id}")));
        await using var command = new NpgsqlCommand("select pg_try_advisory_lock($1)", connection) { Parameters = { new() { Value = key } } };
        return await command.ExecuteScalarAsync(ct) is true;
    }
}
