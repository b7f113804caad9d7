using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>Hosts share nothing but the network: every worker of these tests (and of the demo) runs in
/// a mount namespace of its own, where its state is at the same path as every other host's and no
/// folder of another host, nor the guest outside the source, is there to read. A step that read a path
/// of another host would find nothing and the migration would fail; in every mode it switches over and
/// the main host serves exactly the memory the source sent.</summary>
public class HostsShareNothingTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Theory]
    [InlineData(MigrationMode.Semigrate)]
    [InlineData(MigrationMode.AllEnc)]
    [InlineData(MigrationMode.NoEnc)]
    public async Task Isolated_hosts_migrate_in_every_mode_and_the_main_host_serves_the_sources_memory(MigrationMode mode)
    {
        var ct = TestContext.Current.CancellationToken;
        Assert.True(WorkerFleet.CanIsolate, "the isolated hosts need root and unshare");
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var request = run.Request(guest.Guest.Directory, mode, mainCapacity: 20000, subCapacity: 30000);
        var guestFile = Path.Combine(WorkerFleet.IsolatedGuests, Path.GetFileName(guest.Guest.Directory), "memory.elf");

        var outcome = await run.MigrateAsync(request, ct);

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        var verified = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct);
        Assert.True(verified.Ok, $"{verified}");
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
        // What each host sees, through its own root (/proc/PID/root): its own state at the common path,
        // nothing of any other host at their real paths, and the guest only at the source.
        foreach (var host in new[] { run.Source, run.Main, run.Sub1, run.Sub2 })
        {
            var root = $"/proc/{run.Fleet[host].Pid}/root";
            Assert.True(Directory.Exists(root + WorkerFleet.IsolatedState + "/migrations") || host != run.Source, $"{host} keeps its state at the common path");
            foreach (var other in new[] { run.Source, run.Main, run.Sub1, run.Sub2 })
            {
                Assert.False(Directory.Exists(root + run.StateOf(other)), $"{host} sees {other}'s state folder");
            }
            Assert.False(File.Exists(root + guest.Guest.DumpPath), $"{host} sees the guest at its real path");
            Assert.Equal(host == run.Source, File.Exists(root + guestFile));
        }
        if (mode == MigrationMode.Semigrate)
        {
            Assert.True(File.Exists($"/proc/{run.Fleet[run.Main].Pid}/root{WorkerFleet.IsolatedState}/host.key"), "the main host's key pair is in its own state");
        }
        else
        {
            // The baselines send every page's bytes, free ones too: more on the wire than semigrate would.
            Assert.True(outcome.Transfers.Sum(t => t.Bytes) > outcome.Pages.Total * 4096L, $"{outcome.Transfers.Sum(t => t.Bytes)} bytes");
        }
    }

    [Fact]
    public async Task Hosts_that_run_source_and_main_serve_every_step_of_both_on_their_one_queue()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceAndMain: true);
        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);

        var outcome = await run.MigrateAsync(request, ct);

        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        await run.AssertAuditedAsync(request.MigrationId, ct);
        // The memory check asks both hosts for a digest: the source's worker digests what it sent, the
        // main host's what it serves (each also runs the other role).
        var verified = await MemoryCheck.CompareAsync(run.Steps, request.MigrationId, outcome.Placement!, ct);
        Assert.True(verified.Ok, $"{verified}");
        Assert.Equal(outcome.Pages!.Total, verified.Pages);
    }
}
