using System.Diagnostics;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Activities;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.MemoryServer.Client;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>Dead peers during a migration: a source worker killed mid-transfer, a sub-host that never
/// answers.</summary>
public class MigrationFaultTests(RealGuestFixture guest, PostgresFixture postgres, RabbitMqFixture rabbit)
    : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    private static readonly StepPolicies Fast = StepPolicies.Default with
    {
        Quick = new StepPolicy(2, TimeSpan.FromSeconds(5), TimeSpan.FromMilliseconds(500)),
        Transfer = StepPolicies.Default.Transfer with { Heartbeat = TimeSpan.FromSeconds(3) },
    };

    [Fact]
    public async Task A_source_killed_mid_transfer_and_restarted_resumes_and_the_migration_completes()
    {
        var ct = TestContext.Current.CancellationToken;
        // The source keeps to 8 MB/s over all its transfers, so they last seconds and the kill lands in them.
        await using var run = await MigrationRun.StartAsync(postgres, Fast, ct, sourceMaxMBps: 8);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
        var migration = run.MigrateAsync(request, ct);
        var atKill = await KillSourceMidTransferAsync(run, request, migration, ct);
        var outcome = await migration;

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        await run.AssertAuditedAsync(request.MigrationId, ct);
        TestContext.Current.TestOutputHelper?.WriteLine($"killed at {atKill}; {string.Join("; ", outcome.Transfers)}");
        var killed = outcome.Transfers.Single(t => t.Host == atKill.Host);
        Assert.True(killed.Attempts >= 2, $"the transfer to {killed.Host} ran again after the kill ({killed})");
        // Resumed, not started over: what goes twice is what the memory server had not acked at the kill
        // plus the last heartbeat's lag, per destination. The window lets up to 32 batches of 1 MiB wait
        // for acks, but at 8 MB/s the server keeps up, so only the batches in transit (~1 MiB measured)
        // go twice; 10 MiB leaves room for a slow machine.
        const long bound = (8 + 2) * (1L << 20);
        Assert.All(outcome.Transfers, t => Assert.True(t.ResentBytes <= bound, $"{t.Host} resent {t.ResentBytes} bytes"));
        Assert.True(killed.ResentBytes < killed.Bytes / 2, $"{killed}");

        var verified = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct);
        Assert.True(verified.Ok, $"{verified}");
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
    }

    /// <summary>After a migration whose source was killed mid-transfer (and restarted) and whose main host was
    /// killed once the VM was there, every host's disk (state, page stores, checkpoints, logs) is searched
    /// for a process's memory that is not named plain (webapp's marker): it must be sealed wherever it
    /// lies. In noenc, where the operator asked for nothing to be sealed, the search must find it (which
    /// shows it can find it).</summary>
    [Theory]
    [InlineData(MigrationMode.Semigrate)]
    [InlineData(MigrationMode.AllEnc)]
    [InlineData(MigrationMode.NoEnc)]
    public async Task A_planted_secret_is_on_no_hosts_disk_after_a_migration_whose_source_and_main_host_were_killed(MigrationMode mode)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, Fast, ct, sourceMaxMBps: 8);
        var request = run.Request(guest.Guest.Directory, mode, mainCapacity: 20000, subCapacity: 30000);
        var migration = run.MigrateAsync(request, ct);
        await KillSourceMidTransferAsync(run, request, migration, ct);
        var outcome = await migration;
        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        run.Fleet[run.Main].Kill();

        var roots = new[] { run.Source, run.Main, run.Sub1, run.Sub2 }.Select(run.StateOf).Append(Path.GetDirectoryName(run.StateOf(run.Main))!).Distinct().ToList();
        var found = DiskSearch.Find(roots, "WEBAPPMARK");
        var searched = roots.SelectMany(r => Directory.EnumerateFiles(r, "*", SearchOption.AllDirectories)).Distinct().Sum(f => new FileInfo(f).Length);
        TestContext.Current.TestOutputHelper?.WriteLine($"{mode}: searched {searched / 1048576.0:0} MiB on the four hosts' disks: "
            + (found.Count == 0 ? "the secret is nowhere" : string.Join(", ", found.Select(f => $"{Path.GetRelativePath(roots[^1], f.File)} ({f.Hits} times)"))));
        if (mode == MigrationMode.NoEnc)
        {
            Assert.NotEmpty(found); // sent as it is, by request: the search finds it
        }
        else
        {
            Assert.Empty(found);
        }
    }

    [Fact]
    public async Task A_sub_host_killed_mid_transfer_and_back_a_second_later_gets_its_share_again_and_the_migration_switches_over()
    {
        var ct = TestContext.Current.CancellationToken;
        // 25 MB/s at the source, so the kills land inside the transfers. sub1 keeps its pages in memory
        // (a restart loses them all), sub2 in files (a restart keeps what it acknowledged).
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceMaxMBps: 25, sub1InMemory: true);
        var watch = run.Host.Services.GetRequiredService<TransferWatch>();
        var seed = Environment.TickCount;
        var random = new Random(seed);
        var report = new List<string>();
        for (var trial = 1; trial <= 10; trial++)
        {
            var (victim, kept) = trial % 2 == 1 ? (run.Sub1, "in memory") : (run.Sub2, "in files");
            // The victim comes last: the last share holds the guest's high memory, most of it in use here
            // (the one before it is mostly free pages, which do not travel).
            var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
            request = request with { SubHosts = [.. request.SubHosts.OrderBy(s => s.Host == victim)] };
            var migration = run.MigrateAsync(request, ct);
            // A random point of the victim's transfer: after 0.5 to 9 MiB of the 10 to 25 it carries here.
            var at = (long)((0.5 + 8.5 * random.NextDouble()) * (1 << 20));
            var until = DateTime.UtcNow.AddSeconds(90);
            TransferProgress? atKill;
            while ((atKill = watch.Of(request.MigrationId).FirstOrDefault(p => p.Host == victim && p.Bytes >= at)) is null)
            {
                Assert.True(DateTime.UtcNow < until && !migration.IsCompleted, $"trial {trial}: the transfer to {victim} never sent {at >> 10} KiB");
                await Task.Delay(20, ct);
            }
            Assert.True(atKill.PagesSent < atKill.PagesTotal, $"trial {trial}: the transfer to {victim} ended before its kill");
            run.Fleet[victim].Kill();
            var clock = Stopwatch.StartNew();
            await Task.Delay(1000, ct);
            await run.Fleet.RestartAsync(victim, ct);
            var outcome = await migration;
            var took = clock.Elapsed;

            Assert.True(outcome.State == MigrationState.SwitchedOver, $"trial {trial}: {outcome.State}: {outcome.Reason}");
            await run.AssertAuditedAsync(request.MigrationId, ct);
            await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
            var events = (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Select(e => e.Data).ToList();
            var lost = events.OfType<DestinationLost>().SingleOrDefault();
            var resent = outcome.Transfers.Single(t => t.Host == victim);
            PagingStarted Restarted() => JsonSerializer.Deserialize<PagingStarted>(
                events.OfType<StepCompleted>().Single(s => s.Step == StepKeys.StartPaging(victim, 2)).Result, new JsonSerializerOptions(JsonSerializerDefaults.Web))!;
            if (victim == run.Sub1)
            {
                // It kept nothing: the VM is gone there, paging starts again and everything sent before the kill goes again.
                Assert.Equal((victim, 2), (lost?.Host, lost?.Round));
                Assert.Equal(0, Restarted().HeldPages);
                Assert.True(resent.ResentBytes >= atKill.Bytes * 9 / 10, $"trial {trial}: {resent} after {atKill}");
            }
            else
            {
                // It kept what it had acknowledged and serves the VM again as it starts. A request sent while
                // it was down finds no queue: the VM counts as lost and a second round sends what it had not
                // acknowledged; if none was sent meanwhile (the window full of requests lost with it), a probe
                // finds them lost and the transfer's next attempt sends them again. Either way only what
                // was in flight at the kill went again (as when the source is killed: 10 MiB leaves room
                // for a slow machine).
                if (lost is not null)
                {
                    Assert.Equal((victim, 2), (lost.Host, lost.Round));
                    Assert.True(Restarted().HeldPages > 0, $"trial {trial}: {Restarted()}");
                }
                else
                {
                    Assert.True(resent.Attempts > 1, $"trial {trial}: neither lost nor retried: {resent}");
                }
                Assert.True(resent.ResentBytes <= 10L << 20, $"trial {trial}: {resent} after {atKill}");
            }
            report.Add($"trial {trial}: {victim} ({kept}, {(lost is null ? $"retried, {resent.Attempts} attempts" : "lost, round 2")}) killed after {atKill.Bytes / 1048576.0:0.0} MiB, {atKill.PagesSent} of its {atKill.PagesTotal} pages, "
                + $"switched over {took.TotalSeconds:0.0} s later; {resent.Bytes >> 20} MiB sent to it in all, {resent.ResentBytes >> 20} MiB of them again");

            var verified = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct);
            Assert.True(verified.Ok, $"trial {trial}: {verified}");
            Assert.Equal(outcome.Pages!.Total, verified.Pages);
            await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(request.MigrationId, request.Vm, run.Main)), ct); // room for the next trial
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}:\n" + string.Join("\n", report));
    }

    [Fact]
    public async Task A_sub_host_gone_for_good_mid_transfer_stops_the_other_transfers_before_the_migration_is_undone()
    {
        var ct = TestContext.Current.CancellationToken;
        // 0.5 MB/s at the source: the main host's share (about 40 MiB) would take over a minute, longer than
        // the 30 s a step waits for a worker that went away before it names the host unreachable.
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceMaxMBps: 0.5);
        var watch = run.Host.Services.GetRequiredService<TransferWatch>();
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
        var migration = run.MigrateAsync(request, ct);
        var until = DateTime.UtcNow.AddSeconds(60);
        while (watch.Of(request.MigrationId).FirstOrDefault(p => p.Host == run.Sub2 && p.Bytes >= 1 << 20) is null)
        {
            Assert.True(DateTime.UtcNow < until && !migration.IsCompleted, $"the transfer to {run.Sub2} never got going");
            await Task.Delay(20, ct);
        }
        run.Fleet[run.Sub2].Kill(); // and it does not come back

        var outcome = await migration;

        Assert.Equal(MigrationState.Compensated, outcome.State);
        Assert.Contains($"no worker for host {run.Sub2}", outcome.Reason, StringComparison.Ordinal); // the failure, not the others' being stopped
        Assert.Contains($"not released (unreachable): {run.Sub2}", outcome.Reason, StringComparison.Ordinal);
        await run.AssertAuditedAsync(request.MigrationId, ct);
        await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var events = (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Select(e => e.Data).ToList();
        Assert.DoesNotContain(events.OfType<DestinationTransferred>(), t => t.Host == run.Main); // stopped, not finished
        Assert.Contains("stopping its", run.LogOf(run.Source), StringComparison.Ordinal);
        foreach (var host in new[] { run.Main, run.Sub1 })
        {
            Assert.False(run.HoldsPagesOf(host, request.Vm), $"{host} still holds pages of the VM");
        }
        TestContext.Current.TestOutputHelper?.WriteLine(outcome.Reason ?? "");
    }

    [Fact]
    public async Task A_cancel_during_the_switch_over_either_stops_it_before_the_main_host_takes_the_VM_or_undoes_nothing_after()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var store = run.Host.Services.GetRequiredService<IDocumentStore>();
        var ends = new List<string>();
        for (var trial = 1; trial <= 3; trial++)
        {
            var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
            using var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var migration = run.MigrateAsync(request, cancel.Token);
            while (!migration.IsCompleted)
            {
                await using var query = store.QuerySession();
                if ((await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Any(e => e.Data is StepScheduled { Step: StepKeys.SwitchOver }))
                {
                    await cancel.CancelAsync(); // the moment the switch-over is sent
                    break;
                }
                await Task.Delay(5, ct);
            }
            var outcome = await migration;

            // Either way the end is consistent, and the audit finds it so (never undone after the take-over).
            await run.AssertAuditedAsync(request.MigrationId, ct);
            if (outcome.State == MigrationState.SwitchedOver)
            {
                Assert.Contains("came after the main host had taken the VM over: nothing was undone", outcome.Reason, StringComparison.Ordinal);
                await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(request.MigrationId, request.Vm, run.Main)), ct);
            }
            else
            {
                Assert.Equal(MigrationState.Compensated, outcome.State);
                Assert.StartsWith("cancelled", outcome.Reason, StringComparison.Ordinal);
            }
            ends.Add($"trial {trial}: {outcome.State}");
        }
        TestContext.Current.TestOutputHelper?.WriteLine(string.Join("; ", ends));
    }

    [Fact]
    public async Task A_second_migration_of_a_VM_whose_migration_runs_is_refused_and_the_first_goes_on()
    {
        var ct = TestContext.Current.CancellationToken;
        // Slow enough that the first still runs while a `semigrate migrate` process starts on a loaded machine
        // (at 8 MB/s a CI run saw it end first).
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceMaxMBps: 3);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
        var first = run.MigrateAsync(request, ct);
        var store = run.Host.Services.GetRequiredService<IDocumentStore>();
        var until = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            await using var query = store.QuerySession();
            if (await query.LoadAsync<Audit.MigrationSummary>(request.MigrationId, ct) is not null)
            {
                break;
            }
            Assert.True(DateTime.UtcNow < until && !first.IsCompleted, "the first migration was never accepted");
            await Task.Delay(50, ct);
        }

        // In this process (another orchestrator would be refused alike: the lock is PostgreSQL's) ...
        var refused = await Assert.ThrowsAsync<VmBusyException>(() => run.MigrateAsync(request with { MigrationId = Guid.NewGuid() }, ct));
        Assert.Contains($"VM {request.Vm} is being migrated already (migration {request.MigrationId})", refused.Message, StringComparison.Ordinal);
        // ... and from the command line.
        var cli = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema), "migrate", "--guest", request.Guest, "--source", run.Source,
            "--main", $"{run.Main}:20000", "--sub", $"{run.Sub1}:30000", "--vm", request.Vm.ToString());
        Assert.True(cli.ExitCode == 2, $"exit {cli.ExitCode}, the first {(first.IsCompleted ? "ended" : "runs")}: {cli.Stderr}");
        Assert.Contains($"semigrate: VM {request.Vm} is being migrated already", cli.Stderr, StringComparison.Ordinal);

        var outcome = await first;
        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        await using (var query = store.QuerySession())
        {
            Assert.Single(await query.Query<Audit.MigrationSummary>().Where(s => s.Vm == request.Vm).ToListAsync(ct)); // the refused ones left nothing
        }
    }

    [Fact]
    public async Task A_sub_host_unreachable_at_start_compensates_and_the_vm_stays_at_the_source()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, Fast, ct, startSub2: false);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);

        var outcome = await run.MigrateAsync(request, ct);

        Assert.Equal(MigrationState.Compensated, outcome.State);
        await run.AssertAuditedAsync(request.MigrationId, ct);
        Assert.Contains($"no worker for host {run.Sub2} is running", outcome.Reason, StringComparison.Ordinal);
        Assert.Null(outcome.SwitchOver);
        Assert.Empty(outcome.Transfers);
        // Nothing is left at the destinations that answered; the source keeps the VM (its memory) and
        // no longer holds the migration's key.
        foreach (var host in new[] { run.Main, run.Sub1 })
        {
            Assert.False(run.HoldsPagesOf(host, request.Vm), $"{host} still holds pages of the VM");
        }
        Assert.True(File.Exists(Path.Combine(guest.Guest.Directory, "memory.elf")));
        Assert.False(new SourceState(new HostContext(run.Source, run.StateOf(run.Source)), request.MigrationId).HasKey);

        var summary = await Orchestrator.AuditedEndAsync(run.Host.Services, request.MigrationId, TimeSpan.FromSeconds(30), ct);
        Assert.Equal(MigrationState.Compensated, summary?.State);
        await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var compensated = (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Select(e => e.Data).OfType<MigrationCompensated>().Single();
        Assert.Contains(run.Sub2, compensated.Reason, StringComparison.Ordinal);
        Assert.Equal([run.Main, run.Sub1], compensated.ReleasedHosts.Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task A_sub_host_with_less_room_than_its_share_refuses_at_start_and_nothing_moves()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, Fast, ct);
        // The operator claims 100,000 pages per sub-host; their memory servers hold 30,000.
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 1000, subCapacity: 100_000);

        var outcome = await run.MigrateAsync(request, ct);

        Assert.Equal(MigrationState.Compensated, outcome.State);
        await run.AssertAuditedAsync(request.MigrationId, ct);
        Assert.Matches(@"has room for \d+ more pages; this VM's share is \d+", outcome.Reason);
        Assert.Empty(outcome.Transfers);
        await using var client = await PageClient.CreateAsync(rabbit.Connection, ct);
        foreach (var host in new[] { run.Main, run.Sub1, run.Sub2 })
        {
            Assert.Equal(0, (await client.UsageAsync(host, ct)).UsedPages);
        }
    }

    [Fact]
    public async Task A_source_with_no_worker_is_refused_in_seconds_naming_the_host()
    {
        var ct = TestContext.Current.CancellationToken;
        // The default policies: introspection may take 10 minutes, three times; a host with no worker must not.
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000) with { Source = $"nobody-{Guid.NewGuid():N}"[..15] };
        await run.EnrolAbsentAsync(request.Source, ct); // a request names an enrolled source (the data key comes wrapped by its key)

        var clock = System.Diagnostics.Stopwatch.StartNew();
        var outcome = await run.MigrateAsync(request, ct);

        Assert.Equal(MigrationState.Refused, outcome.State);
        await run.AssertAuditedAsync(request.MigrationId, ct);
        Assert.Contains($"no worker for host {request.Source} is running", outcome.Reason, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromMinutes(1), $"refused after {clock.Elapsed}");
    }

    /// <summary>Kills the source once a transfer with many bytes to send is under way (which destination that
    /// is depends on where this boot of the guest put its free pages), and starts it again a second later.</summary>
    private static async Task<TransferProgress> KillSourceMidTransferAsync(MigrationRun run, MigrationRequest request, Task migration, CancellationToken ct)
    {
        var watch = run.Host.Services.GetRequiredService<TransferWatch>();
        var until = DateTime.UtcNow.AddSeconds(60);
        TransferProgress? atKill;
        while ((atKill = watch.Of(request.MigrationId).FirstOrDefault(p => p.Bytes >= 4 << 20 && p.PagesSent < p.PagesTotal / 2)) is null)
        {
            Assert.True(DateTime.UtcNow < until && !migration.IsCompleted, "no transfer was under way with bytes to send");
            await Task.Delay(50, ct);
        }
        run.Fleet[run.Source].Kill();
        await Task.Delay(1000, ct);
        await run.Fleet.RestartAsync(run.Source, ct);
        return atKill;
    }
}
