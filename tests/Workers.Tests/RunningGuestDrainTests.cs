using System.Text.Json;
using SEmigrate.Contracts.Migration;
using SEmigrate.Guest.Qemu;
using SEmigrate.TestSupport;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>Host maintenance with real running guests: a host running two guests is drained to the
/// others (embedded engine, `maintenance drain`); both continue at the main host with their workloads
/// intact, and the fleet inventory shows them there.</summary>
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
    public async Task A_host_running_two_guests_is_drained_and_both_go_on_at_the_main_host()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, guests: guests.FullName);
        foreach (var name in Names)
        {
            var started = await SemigrateProcess.RunAsync(new Dictionary<string, string>(),
                ["--target", run.Fleet[run.Source].Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), "--mount", "--"],
                ["guest", "start", name, "--guests", Processes.WorkerFleet.IsolatedGuests, "--mem", "192M", "--workload", "32"]);
            Assert.True(started.ExitCode == 0, started.Stderr);
        }
        await run.FleetOnceAsync(f => run.AllReported(f)
            && f.Hosts.FirstOrDefault(h => h.Host == run.Source)?.Guests.Count(g => g.Running) == 2, "the source reported its two running guests", ct);

        var drain = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema), "maintenance", "drain", run.Source, "--json");

        Assert.True(drain.ExitCode == 0, drain.Stdout + drain.Stderr);
        using var json = JsonDocument.Parse(drain.Stdout);
        var moved = json.RootElement.GetProperty("moved").EnumerateArray().ToList();
        Assert.Equal(Names, moved.Select(m => m.GetProperty("vm").GetString()).Order());
        foreach (var m in moved)
        {
            var (migration, to) = (m.GetProperty("migrationId").GetGuid(), m.GetProperty("to").GetString()!);
            Assert.Equal(run.Main, to); // the only host that can take a VM over
            await run.AssertAuditedAsync(migration, ct);
            // Its workload goes on at the main host, no page ever wrong.
            var serial = Path.Combine(run.StateOf(to), "migrations", migration.ToString("N"), "vm", "serial.log");
            var until = DateTime.UtcNow.AddMinutes(2);
            IReadOnlyList<WorkloadPass> passes;
            while ((passes = LiveGuest.PassesIn(File.Exists(serial) ? File.ReadAllText(serial) : "")).Count < 2)
            {
                Assert.True(DateTime.UtcNow < until, $"{m.GetProperty("vm")} did not go on at {to}");
                await Task.Delay(200, ct);
            }
            Assert.All(passes, p => Assert.Equal(0, p.Errors));
        }
        var fleet = await run.FleetOnceAsync(f => moved.All(m => f.Vms.Any(v => v.Vm == m.GetProperty("vmId").GetGuid() && v.Host == run.Main && v.Running)),
            "the main host reported both VMs running", ct);
        Assert.Equal(2, fleet.Vms.Count(v => v.Host == run.Main && v.LastState == "SwitchedOver"));
        foreach (var m in moved)
        {
            await run.Steps.StopVmAsync(new StopVm(m.GetProperty("migrationId").GetGuid(), m.GetProperty("vmId").GetGuid(), run.Main), ct);
        }
    }
}
