using System.Text.Json;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>The fleet inventory: host workers report themselves (HostSeen, through the auditor) and
/// `semigrate fleet` shows them and the VMs on them with their last migration.</summary>
public class FleetTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Hosts_report_themselves_and_a_migrated_VM_shows_at_its_main_host_with_its_migration_until_it_stops()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);

        var fleet = await run.FleetOnceAsync(f => run.AllReported(f), "every host reported", ct);
        Assert.Equal(["source"], fleet.Hosts.Single(h => h.Host == run.Source).Roles);
        Assert.Equal(["sub"], fleet.Hosts.Single(h => h.Host == run.Sub1).Roles);
        Assert.Equal(30_000, fleet.Hosts.Single(h => h.Host == run.Sub1).CapacityPages);
        Assert.Contains(fleet.Vms, v => v.Host == run.Source && v.Guest == Path.GetFileName(guest.Guest.Directory));

        var request = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
        var outcome = await run.MigrateAsync(request, ct);
        Assert.True(outcome.State == MigrationState.SwitchedOver, $"{outcome.State}: {outcome.Reason}");
        await run.FleetOnceAsync(f => f.Vms.Any(v => v.Vm == request.Vm), "the main host reported the VM", ct);

        // As an operator sees it.
        var shown = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema), "fleet", "--json");
        Assert.True(shown.ExitCode == 0, shown.Stderr);
        using var json = JsonDocument.Parse(shown.Stdout);
        var vm = json.RootElement.GetProperty("vms").EnumerateArray().Single(v => v.GetProperty("vm").GetString() == request.Vm.ToString());
        Assert.Equal(run.Main, vm.GetProperty("host").GetString());
        Assert.Equal(request.MigrationId.ToString(), vm.GetProperty("lastMigration").GetString());
        Assert.Equal("SwitchedOver", vm.GetProperty("lastState").GetString());
        Assert.Equal(outcome.Pages!.Total, vm.GetProperty("pages").GetInt64());
        var table = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema), "fleet");
        Assert.Contains(run.Main, table.Stdout, StringComparison.Ordinal);
        Assert.Contains($"{request.Vm}", table.Stdout, StringComparison.Ordinal);

        // A drain of that main host reports the VM it cannot move (a memory dump's runs nowhere), and exits 1.
        var drain = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema), "maintenance", "drain", run.Main, "--main", run.Source, "--json");
        Assert.True(drain.ExitCode == 1, drain.Stdout + drain.Stderr);
        using var report = JsonDocument.Parse(drain.Stdout);
        Assert.Empty(report.RootElement.GetProperty("moved").EnumerateArray());
        var stays = Assert.Single(report.RootElement.GetProperty("notMoved").EnumerateArray());
        Assert.Equal($"VM {request.Vm}", stays.GetProperty("vm").GetString());
        Assert.Contains("a memory dump's VM taken over here", stays.GetProperty("reason").GetString(), StringComparison.Ordinal);

        await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(request.MigrationId, request.Vm, run.Main)), ct);
        await run.FleetOnceAsync(f => f.Vms.All(v => v.Vm != request.Vm), "the VM left the inventory once stopped", ct);
    }
}
