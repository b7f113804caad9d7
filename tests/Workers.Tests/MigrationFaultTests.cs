using Marten;
using Microsoft.Extensions.DependencyInjection;
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
        Quick = new StepPolicy(2, TimeSpan.FromSeconds(3), TimeSpan.FromMilliseconds(500)),
        Transfer = StepPolicies.Default.Transfer with { Heartbeat = TimeSpan.FromSeconds(3) },
    };

    [Fact]
    public async Task A_source_killed_mid_transfer_and_restarted_resumes_and_the_migration_completes()
    {
        var ct = TestContext.Current.CancellationToken;
        // The source keeps to 8 MB/s per transfer, so the transfers last seconds and the kill lands in them.
        await using var run = await MigrationRun.StartAsync(postgres, Fast, ct, sourceMaxMBps: 8);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
        var watch = run.Host.Services.GetRequiredService<TransferWatch>();

        var migration = new MigrationProcedure(run.Steps).RunAsync(request, ct);
        var until = DateTime.UtcNow.AddSeconds(60);
        while (!watch.Of(request.MigrationId).Any(p => p.Host == run.Sub1 && p.PagesSent > p.PagesTotal / 10))
        {
            Assert.True(DateTime.UtcNow < until && !migration.IsCompleted, "the transfer to the first sub-host never got a tenth of the way");
            await Task.Delay(50, ct);
        }
        var atKill = watch.Of(request.MigrationId).Single(p => p.Host == run.Sub1);
        run.Fleet[run.Source].Kill();
        await Task.Delay(1000, ct);
        await run.Fleet.RestartAsync(run.Source, ct);
        var outcome = await migration;

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        TestContext.Current.TestOutputHelper?.WriteLine($"killed at {atKill}; {string.Join("; ", outcome.Transfers)}");
        Assert.True(atKill.PagesSent < atKill.PagesTotal, "killed mid-transfer");
        var sub1 = outcome.Transfers.Single(t => t.Host == run.Sub1);
        Assert.True(sub1.Attempts >= 2, $"the transfer to {run.Sub1} ran again after the kill ({sub1})");
        // Resumed, not started over: what went twice is at most the batches in flight at the kill
        // (8 of 1 MiB), plus the last heartbeat's lag, per destination.
        const long bound = (8 + 2) * (1L << 20);
        Assert.All(outcome.Transfers, t => Assert.True(t.ResentBytes <= bound, $"{t.Host} resent {t.ResentBytes} bytes"));
        Assert.True(sub1.ResentBytes < sub1.Bytes / 2, $"{sub1}");

        var verified = await run.Steps.VerifyAsync(run.Main, new VerifyMemory(request.MigrationId, request.Vm, request.GuestDir,
            Path.Combine(run.StateOf(run.Source), "migrations", request.MigrationId.ToString("N"), "classes.map")), ct);
        Assert.Equal(0, verified.Mismatches);
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
    }

    [Fact]
    public async Task A_sub_host_unreachable_at_start_compensates_and_the_vm_stays_at_the_source()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, Fast, ct, startSub2: false);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);

        var outcome = await new MigrationProcedure(run.Steps).RunAsync(request, ct);

        Assert.Equal(MigrationState.Compensated, outcome.State);
        Assert.Contains($"host {run.Sub2} did not answer", outcome.Reason, StringComparison.Ordinal);
        Assert.Null(outcome.SwitchOver);
        Assert.Empty(outcome.Transfers);
        // Nothing is left at the destinations that answered; the source keeps the VM (its memory) and
        // no longer holds the migration's key.
        await using var client = await PageClient.CreateAsync(rabbit.Connection, ct);
        foreach (var host in new[] { run.Main, run.Sub1 })
        {
            Assert.False((await client.UsageAsync(host, ct)).PagesPerVm.ContainsKey(request.Vm), $"{host} still holds pages of the VM");
        }
        Assert.True(File.Exists(Path.Combine(request.GuestDir, "memory.elf")));
        Assert.False(File.Exists(Path.Combine(run.StateOf(run.Source), "migrations", request.MigrationId.ToString("N"), "data.key")));

        var summary = await Orchestrator.AuditedEndAsync(run.Host.Services, request.MigrationId, TimeSpan.FromSeconds(30), ct);
        Assert.Equal(MigrationState.Compensated, summary?.State);
        await using var query = run.Host.Services.GetRequiredService<IDocumentStore>().QuerySession();
        var compensated = (await query.Events.FetchStreamAsync(request.MigrationId, token: ct)).Select(e => e.Data).OfType<MigrationCompensated>().Single();
        Assert.Contains(run.Sub2, compensated.Reason, StringComparison.Ordinal);
        Assert.Equal([run.Main, run.Sub1], compensated.ReleasedHosts.Order(StringComparer.Ordinal));
    }
}
