using System.Text.Json;
using SEmigrate.Contracts.Migration;
using SEmigrate.Guest.Qemu;
using SEmigrate.TestSupport;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>Host maintenance with real running guests: a host running two guests is drained to the
/// others (embedded engine, `maintenance drain`); both continue at the main host with their workloads
/// intact, and the fleet inventory shows them there; then that main host is drained, and they move on.</summary>
public sealed class RunningGuestDrainTests(PostgresFixture postgres) : IClassFixture<PostgresFixture>, IAsyncLifetime
{
    private static readonly string[] Names = ["g1", "g2"];
    private readonly DirectoryInfo guests = Directory.CreateTempSubdirectory("semigrate-drain-live-");

    public ValueTask InitializeAsync() => ValueTask.CompletedTask;

    public ValueTask DisposeAsync()
    {
        // A source QEMU lives on its own: end any the drain did not.
        foreach (var name in Names)
        {
            Commands.RunningGuestTrial.StopSourceGuest(Path.Combine(guests.FullName, name));
        }
        guests.Delete(recursive: true);
        return ValueTask.CompletedTask;
    }

    [Fact]
    public async Task A_host_running_two_guests_is_drained_and_both_go_on_at_the_main_host_which_is_drained_in_turn()
    {
        var ct = TestContext.Current.CancellationToken;
        // Both the source and the main host can take either role: the guests go there and back.
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, guests: guests.FullName, sourceAndMain: true);
        foreach (var name in Names)
        {
            var started = await SemigrateProcess.RunAsync(new Dictionary<string, string>(),
                ["--target", run.Fleet[run.Source].Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), "--mount", "--"],
                ["guest", "start", name, "--guests", Processes.WorkerFleet.IsolatedGuests, "--mem", "192M", "--workload", "32"]);
            Assert.True(started.ExitCode == 0, started.Stderr);
        }
        await run.FleetOnceAsync(f => run.AllReported(f)
            && f.Hosts.FirstOrDefault(h => h.Host == run.Source)?.Guests.Count(g => g.Running) == 2, "the source reported its two running guests", ct);

        var there = await DrainAsync(run, run.Source, run.Main, ct);
        var fleet = await run.FleetOnceAsync(f => there.All(m => f.Vms.Any(v => v.Vm == m.VmId && v.Host == run.Main && v.Running && v.Guest == m.Vm)),
            "the main host reported both VMs running, by their names", ct);
        Assert.Equal(2, fleet.Vms.Count(v => v.Host == run.Main && v.LastState == "SwitchedOver"));

        // The main host is drained in turn: it moves the guests it took over on, reading their RAM through
        // their pagers, and lets go of them (their pages at every host of their first placement).
        var back = await DrainAsync(run, run.Main, run.Source, ct);
        fleet = await run.FleetOnceAsync(f => f.Hosts.Single(h => h.Host == run.Main) is { Vms.Count: 0, UsedPages: 0 }
            && back.All(m => f.Vms.Any(v => v.Vm == m.VmId && v.Host == run.Source && v.Running && v.Guest == m.Vm)),
            "the main host holds nothing, and the source runs both guests again as their main host", ct);
        foreach (var m in there)
        {
            await run.AssertAuditedAsync(m.MigrationId, ct); // the first migrations' VMs stopped, audited with them
        }
        foreach (var m in back)
        {
            await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(m.MigrationId, m.VmId, run.Source)), ct);
        }
    }

    /// <summary>Drains <paramref name="host"/> (`maintenance drain --json`): both guests moved to
    /// <paramref name="to"/> (the only other host that can take a VM over), audited, and their workloads
    /// go on there, no page ever wrong.</summary>
    private async Task<List<DrainMoved>> DrainAsync(MigrationRun run, string host, string to, CancellationToken ct)
    {
        var drain = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema), "maintenance", "drain", host, "--main", to, "--json");

        Assert.True(drain.ExitCode == 0, drain.Stdout + drain.Stderr);
        using var json = JsonDocument.Parse(drain.Stdout);
        var moved = json.RootElement.GetProperty("moved").EnumerateArray()
            .Select(m => new DrainMoved(m.GetProperty("vm").GetString()!, m.GetProperty("vmId").GetGuid(), m.GetProperty("migrationId").GetGuid(),
                m.GetProperty("to").GetString()!, MigrationState.SwitchedOver))
            .ToList();
        Assert.Equal(Names, moved.Select(m => m.Vm).Order());
        Assert.Empty(json.RootElement.GetProperty("notMoved").EnumerateArray());
        foreach (var m in moved)
        {
            Assert.Equal(to, m.To);
            await run.AssertAuditedAsync(m.MigrationId, ct);
            var serial = Path.Combine(run.StateOf(to), "migrations", m.MigrationId.ToString("N"), "vm", "serial.log");
            var until = DateTime.UtcNow.AddMinutes(2);
            IReadOnlyList<WorkloadPass> passes;
            while ((passes = LiveGuest.PassesIn(File.Exists(serial) ? File.ReadAllText(serial) : "")).Count < 2)
            {
                Assert.True(DateTime.UtcNow < until, $"{m.Vm} did not go on at {to}");
                await Task.Delay(200, ct);
            }
            Assert.All(passes, p => Assert.Equal(0, p.Errors));
        }
        return moved;
    }
}
