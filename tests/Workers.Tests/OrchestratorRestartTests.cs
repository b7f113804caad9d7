using System.Diagnostics;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.MemoryServer.Client;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>The embedded engine is durable: a `semigrate migrate` killed (SIGKILL) in the middle of its
/// transfers leaves a journal from which another orchestrator finishes the migration, replaying what
/// was done and sending only what was not; only one orchestrator drives a migration at a time, and one
/// killed while it resumes a migration leaves it to the next.</summary>
public class OrchestratorRestartTests(RealGuestFixture guest, PostgresFixture postgres, RabbitMqFixture rabbit)
    : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task A_migrate_killed_mid_transfer_is_resumed_by_one_orchestrator_and_finished_by_another_when_that_one_is_killed()
    {
        var ct = TestContext.Current.CancellationToken;
        // The source keeps to 8 MB/s over all its transfers, so they last seconds and the kill lands in them.
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceMaxMBps: 8);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
        var vm = request.Vm;
        var environment = await run.CommandEnvironmentAsync(postgres.Schema);
        using var migrate = StartMigrate(run, request, environment);
        _ = migrate.StandardOutput.ReadToEndAsync(ct);
        var stderr = migrate.StandardError.ReadToEndAsync(ct);

        // Kill it once a transfer with many bytes to send is under way.
        var watch = run.Host.Services.GetRequiredService<TransferWatch>();
        var store = run.Host.Services.GetRequiredService<IDocumentStore>();
        var until = DateTime.UtcNow.AddSeconds(90);
        Guid id = default;
        TransferProgress? atKill = null;
        while (atKill is null)
        {
            Assert.True(DateTime.UtcNow < until && !migrate.HasExited, $"no transfer was under way with bytes to send: {(migrate.HasExited ? await stderr : "")}");
            await Task.Delay(50, ct);
            if (id == default)
            {
                await using var query = store.QuerySession();
                id = (await query.Query<MigrationSummary>().Where(s => s.Vm == vm).Select(s => s.Id).ToListAsync(ct)).SingleOrDefault();
                continue;
            }
            atKill = watch.Of(id).FirstOrDefault(p => p.Bytes >= 4 << 20 && p.PagesSent < p.PagesTotal / 2);
        }
        migrate.Kill();
        await migrate.WaitForExitAsync(ct);

        var engine = run.Host.Services.GetRequiredService<EmbeddedEngine>();
        Assert.Contains(id, await engine.UnfinishedAsync(ct));
        // Two orchestrators start at once (`worker --role orchestrator`): one resumes it, the other leaves it
        // be; killed (SIGKILL) while it resumes, the other takes over.
        var clock = Stopwatch.StartNew();
        var logs = Directory.CreateTempSubdirectory("semigrate-orchestrators-");
        var orchestrators = new[] { $"orch-a-{Guid.NewGuid():N}"[..14], $"orch-b-{Guid.NewGuid():N}"[..14] };
        bool Resumed(string o) => File.Exists(Path.Combine(logs.FullName, $"{o}.log"))
            && File.ReadAllText(Path.Combine(logs.FullName, $"{o}.log")).Contains($"resuming migration {id}", StringComparison.Ordinal);
        string first, second;
        TimeSpan resumedAfter, killedAfter;
        using (var fleet = await WorkerFleet.StartAsync([.. orchestrators.Select(o => new WorkerFleet.Worker("orchestrator", o))], logs.FullName, logs.FullName, ct, environment))
        {
            var deadline = DateTime.UtcNow.AddMinutes(1);
            string? resumer;
            while ((resumer = orchestrators.FirstOrDefault(Resumed)) is null)
            {
                Assert.True(DateTime.UtcNow < deadline, "no orchestrator resumed the migration within a minute");
                await Task.Delay(50, ct);
            }
            (first, second, resumedAfter) = (resumer, orchestrators.Single(o => o != resumer), clock.Elapsed);
            await Task.Delay(500, ct); // it is driving the migration now
            Assert.False(Resumed(second), "both orchestrators resumed the migration");
            Assert.Contains(id, await engine.UnfinishedAsync(ct));
            fleet[first].Kill();
            killedAfter = clock.Elapsed;

            // Until its procedure has returned (the release at the source comes after the switch-over).
            deadline = DateTime.UtcNow.AddMinutes(3);
            while ((await engine.UnfinishedAsync(ct)).Contains(id))
            {
                Assert.True(DateTime.UtcNow < deadline, "the migration was not finished within 3 minutes");
                await Task.Delay(200, ct);
            }
            await using var query = store.QuerySession();
            var summary = await query.LoadAsync<MigrationSummary>(id, ct);
            Assert.True(summary?.State == MigrationState.SwitchedOver, $"{summary?.State}: {summary?.Reason}");
        }
        var finishedBy = Resumed(second);
        logs.Delete(recursive: true);
        TestContext.Current.TestOutputHelper?.WriteLine($"migrate killed at {atKill}; resumed by {first} after {resumedAfter.TotalSeconds:0.0} s, which was killed "
            + $"{(killedAfter - resumedAfter).TotalSeconds:0.0} s later; {second} finished it {clock.Elapsed.TotalSeconds:0.0} s after the first kill");
        Assert.True(finishedBy, $"{second} did not take the migration over");
        Assert.DoesNotContain(id, await engine.UnfinishedAsync(ct));

        List<object> events;
        await using (var query = store.QuerySession())
        {
            events = [.. (await query.Events.FetchStreamAsync(id, token: ct)).Select(e => e.Data)];
        }
        // Replayed, not asked again: every step ended once, every lifecycle event is there once.
        Assert.All(events.OfType<StepCompleted>().GroupBy(s => s.Step), g => Assert.Single(g));
        Assert.Single(events.OfType<StepCompleted>(), s => s.Step == StepKeys.Introspect);
        Assert.Single(events.OfType<StepScheduled>(), s => s.Step == StepKeys.Introspect);
        Assert.Single(events.OfType<MigrationRequested>());
        Assert.Single(events.OfType<PagesClassified>());
        Assert.Equal(3, events.OfType<DestinationTransferred>().Count());
        Assert.Single(events.OfType<MigrationSwitchedOver>());
        // The transfer cut by the kill resumed from the source's checkpoint: at most what was in flight went twice.
        var killed = events.OfType<DestinationTransferred>().Single(t => t.Host == atKill.Host);
        Assert.True(killed.ResentBytes < killed.Bytes / 2, $"{killed}");

        var verified = await MemoryCheck.CompareAsync(run.Steps, id, new PlacementPlan(events.OfType<PagesPlaced>().Single().Assignments), ct);
        Assert.True(verified.Ok, $"{verified}");
        Assert.Equal(events.OfType<PagesClassified>().Single() is var c ? c.Zero + c.Plain + c.Sealed : 0, verified.Pages);

        // A resumed migration audits like any other: `semigrate audit` passes.
        var audit = await SemigrateProcess.RunAsync(environment, "audit", id.ToString());
        Assert.True(audit.ExitCode == 0, audit.Stdout + audit.Stderr);
        Assert.Contains("audit passed", audit.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("FAILED", audit.Stdout, StringComparison.Ordinal);

        // A procedure that no longer does what it did fails the replay, naming the step: here, one
        // whose hand-over is another step than the one recorded.
        var diverged = await MigrationAudit.ReplayAsync(id,
            [.. events.Select(e => e is StepCompleted { Step: StepKeys.HandOver } c ? c with { Step = "hand-over-as-it-was" } : e)], MigrationState.SwitchedOver);
        Assert.False(diverged.Ok);
        Assert.Contains("asks for step 'hand-over', which the migration never ran", diverged.Detail, StringComparison.Ordinal);

        // An event edited, then one deleted, in the database: the chain names it.
        await using var db = new NpgsqlConnection(environment["SEMIGRATE__Postgres__ConnectionString"]);
        await db.OpenAsync(ct);
        var table = $"{postgres.Schema}.mt_events";
        var edited = await ScalarAsync<long>(db, $"select version from {table} where stream_id = $1 and type = 'destination_transferred' order by version limit 1", id);
        await ExecuteAsync(db, $"update {table} set data = jsonb_set(data, '{{Pages}}', '1') where stream_id = $1 and version = {edited}", id);
        var afterEdit = await SemigrateProcess.RunAsync(environment, "audit", id.ToString(), "--json");
        Assert.Equal(1, afterEdit.ExitCode);
        Assert.Contains($"event {edited} (DestinationTransferred): its content is not what was hashed", afterEdit.Stdout, StringComparison.Ordinal);
        var deleted = await ScalarAsync<long>(db, $"select version from {table} where stream_id = $1 and type = 'pages_classified'", id);
        await ExecuteAsync(db, $"delete from {table} where stream_id = $1 and version = {deleted}", id);
        var afterDelete = await SemigrateProcess.RunAsync(environment, "audit", id.ToString());
        Assert.Equal(1, afterDelete.ExitCode);
        Assert.Contains($"event {deleted + 1} (", afterDelete.Stdout, StringComparison.Ordinal);
        Assert.Contains($"event {deleted} is missing", afterDelete.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Killed_at_ten_random_points_every_migration_ends_switched_over_or_undone_never_stuck()
    {
        var ct = TestContext.Current.CancellationToken;
        // 25 MB/s at the source: a migration takes about 7 s from its process start (4 s of them sending), so the kills land in every step.
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceMaxMBps: 25);
        var environment = await run.CommandEnvironmentAsync(postgres.Schema);
        var store = run.Host.Services.GetRequiredService<IDocumentStore>();
        var engine = run.Host.Services.GetRequiredService<EmbeddedEngine>();
        var seed = Environment.TickCount;
        var random = new Random(seed);
        var ended = new List<string>();
        for (var trial = 1; trial <= 10; trial++)
        {
            var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
            // Eight kills at random times after the migration was accepted (a process start takes 1 to 5 s
            // on a loaded machine: counting from it, kills landed before the migration began); the last
            // two the moment the switch-over is sent (a short step that random times rarely hit).
            var atSwitchOver = trial > 8;
            var killAfter = TimeSpan.FromMilliseconds(atSwitchOver ? 30_000 : random.Next(0, 5000));
            using (var migrate = StartMigrate(run, request, environment))
            {
                _ = migrate.StandardOutput.ReadToEndAsync(ct);
                _ = migrate.StandardError.ReadToEndAsync(ct);
                await Task.WhenAny(migrate.WaitForExitAsync(ct), StepSentAsync(store, request.Vm, _ => true, ct));
                await Task.WhenAny(migrate.WaitForExitAsync(ct), Task.Delay(killAfter, ct), atSwitchOver ? SwitchOverSentAsync(store, request.Vm, ct) : Task.Delay(-1, ct));
                if (migrate.HasExited)
                {
                    ended.Add($"trial {trial}: finished before its kill");
                }
                migrate.Kill();
                await migrate.WaitForExitAsync(ct);
            }
            await using var query = store.QuerySession();
            var id = (await query.Query<MigrationSummary>().Where(m => m.Vm == request.Vm).Select(m => m.Id).ToListAsync(ct)).SingleOrDefault();
            if (id == default)
            {
                ended.Add($"trial {trial}: killed at {killAfter.TotalSeconds:0.0} s, before it accepted the migration: nothing to resume");
                continue;
            }
            var step = (await query.Events.FetchStreamAsync(id, token: ct)).Select(e => e.Data).OfType<StepScheduled>().LastOrDefault()?.Step;
            var clock = Stopwatch.StartNew();
            // (One that had ended replays to its end, sending nothing.)
            var outcome = await engine.ResumeAsync(id, ct);
            Assert.NotNull(outcome);
            ended.Add($"trial {trial}: killed {(atSwitchOver ? "at the switch-over" : $"{killAfter.TotalSeconds:0.0} s after its first step")} (last step sent: {step ?? "none"}), resumed: {outcome.State} in {clock.Elapsed.TotalSeconds:0.0} s");
            Assert.DoesNotContain(id, await engine.UnfinishedAsync(ct));
            await run.AssertAuditedAsync(id, ct);
            var summary = await query.LoadAsync<MigrationSummary>(id, ct);
            Assert.True(summary!.State is MigrationState.SwitchedOver or MigrationState.Compensated, $"trial {trial}: {summary.State} {summary.Reason}");
            if (summary.State == MigrationState.SwitchedOver)
            {
                var placement = new PlacementPlan((await query.Events.FetchStreamAsync(id, token: ct)).Select(e => e.Data).OfType<PagesPlaced>().Single().Assignments);
                var verified = await MemoryCheck.CompareAsync(run.Steps, id, placement, ct);
                Assert.True(verified.Ok, $"trial {trial}: {verified}");
                await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(id, request.Vm, run.Main)), ct); // room for the next trial
            }
        }
        var report = $"seed {seed}: " + string.Join("; ", ended);
        TestContext.Current.TestOutputHelper?.WriteLine(report);
        Assert.True(ended.Count(e => e.Contains("resumed", StringComparison.Ordinal)) >= 5, $"too few kills landed in a migration: {report}");
        Assert.Equal(2, ended.Count(e => e.Contains("at the switch-over (last step sent: switch-over)", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task A_migrate_killed_while_it_undoes_is_undone_to_the_end_by_another_orchestrator()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var environment = await run.CommandEnvironmentAsync(postgres.Schema);
        // The operator claims 100,000 pages per sub-host; their memory servers hold 30,000: starting paging
        // fails there, and the migration is undone at every destination.
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 1000, subCapacity: 100_000);
        var store = run.Host.Services.GetRequiredService<IDocumentStore>();
        using (var migrate = StartMigrate(run, request, environment))
        {
            _ = migrate.StandardOutput.ReadToEndAsync(ct);
            _ = migrate.StandardError.ReadToEndAsync(ct);
            await Task.WhenAny(migrate.WaitForExitAsync(ct), StepSentAsync(store, request.Vm, s => s.StartsWith("release-paging:", StringComparison.Ordinal), ct));
            Assert.False(migrate.HasExited, "the migration was undone before the kill");
            migrate.Kill();
            await migrate.WaitForExitAsync(ct);
        }
        await using var query = store.QuerySession();
        var id = (await query.Query<MigrationSummary>().Where(m => m.Vm == request.Vm).Select(m => m.Id).ToListAsync(ct)).Single();
        Assert.Equal(MigrationState.Placed, (await query.LoadAsync<MigrationSummary>(id, ct))!.State); // killed mid-undo: not ended

        var outcome = await run.Host.Services.GetRequiredService<EmbeddedEngine>().ResumeAsync(id, ct);

        Assert.Equal(MigrationState.Compensated, outcome?.State);
        Assert.Matches(@"has room for \d+ more pages; this VM's share is \d+", outcome!.Reason);
        await run.AssertAuditedAsync(id, ct);
        await using var client = await PageClient.CreateAsync(rabbit.Connection, ct);
        foreach (var host in new[] { run.Main, run.Sub1, run.Sub2 })
        {
            Assert.Equal(0, (await client.UsageAsync(host, ct)).UsedPages);
        }
    }

    /// <summary>Until the migration of <paramref name="vm"/> has sent its switch-over.</summary>
    private static Task SwitchOverSentAsync(IDocumentStore store, Guid vm, CancellationToken ct) => StepSentAsync(store, vm, s => s == StepKeys.SwitchOver, ct);

    /// <summary>Until the migration of <paramref name="vm"/> has sent a step that <paramref name="matches"/>.</summary>
    private static async Task StepSentAsync(IDocumentStore store, Guid vm, Func<string, bool> matches, CancellationToken ct)
    {
        while (true)
        {
            await using var query = store.QuerySession();
            if ((await query.Query<MigrationSummary>().Where(m => m.Vm == vm).Select(m => m.Id).ToListAsync(ct)).SingleOrDefault() is var id && id != default
                && (await query.Events.FetchStreamAsync(id, token: ct)).Any(e => e.Data is StepScheduled s && matches(s.Step)))
            {
                return;
            }
            await Task.Delay(5, ct);
        }
    }

    private static Process StartMigrate(MigrationRun run, MigrationRequest request, IReadOnlyDictionary<string, string> environment)
    {
        var start = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "semigrate"),
            ["migrate", "--guest", request.Guest, "--source", run.Source, "--main", $"{run.Main}:{request.Main.CapacityPages}",
             .. request.SubHosts.SelectMany(s => new[] { "--sub", $"{s.Host}:{s.CapacityPages}" }), "--plain-process", "vaultdb", "--vm", request.Vm.ToString(), "--json"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var (key, value) in environment)
        {
            start.Environment[key] = value;
        }
        return Process.Start(start) ?? throw new InvalidOperationException("could not start semigrate migrate");
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection db, string sql, Guid stream)
    {
        await using var command = new NpgsqlCommand(sql, db) { Parameters = { new() { Value = stream } } };
        return (T)(await command.ExecuteScalarAsync(TestContext.Current.CancellationToken))!;
    }

    private static async Task ExecuteAsync(NpgsqlConnection db, string sql, Guid stream)
    {
        await using var command = new NpgsqlCommand(sql, db) { Parameters = { new() { Value = stream } } };
        Assert.Equal(1, await command.ExecuteNonQueryAsync(TestContext.Current.CancellationToken));
    }
}
