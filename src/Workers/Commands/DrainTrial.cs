using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Guest.Qemu;
using SEmigrate.Workers.Trust;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate demo --drain`: host maintenance on this machine. A host runs two guests (each with
/// a memory workload), the other hosts report their room, and the host is drained to them; the report
/// says what moved where and what did not, and the guests are watched going on where they went.</summary>
public static class DrainTrial
{
    private static readonly string[] Names = ["demo-web", "demo-db"];
    private const int MemoryMiB = 192;

    public static async Task<DrainReport?> RunAsync(string? keepDir, Action<string> say, CancellationToken ct)
    {
        if (!WorkerFleet.CanIsolate)
        {
            say("drain: skipped (the hosts' mount namespaces and FUSE need root)");
            return null;
        }
        var id = Guid.NewGuid().ToString("N")[..6];
        var (source, main, sub1, sub2) = ($"drain-{id}-a", $"drain-{id}-b", $"drain-{id}-c", $"drain-{id}-d");
        var root = keepDir is null ? Directory.CreateTempSubdirectory("semigrate-drain-").FullName : Path.Combine(keepDir, "drain");
        var guests = Directory.CreateDirectory(Path.Combine(root, "guests")).FullName;
        var logs = Directory.CreateDirectory(Path.Combine(root, "logs")).FullName;
        say($"drain: starting hosts {source} (source, with two guests), {main} (main), {sub1}, {sub2} (sub)");
        using var host = Orchestrator.Build(StepPolicies.Default);
        var workerEnvironment = LocalOperator.WorkerEnvironment(host.Services); // the operator's key first: the auditor checks enrolments with it
        await host.StartAsync(ct);
        using var fleet = await WorkerFleet.StartAsync(
        [
            new WorkerFleet.Worker("source", source, GuestsFolder: guests),
            // Room for one guest whole and a quarter of the other (with room for each hand-over, up to 32 MiB): the second runs on paging from the sub-hosts.
            new WorkerFleet.Worker("main", main, MemoryMiB * 256L * 5 / 4 + 4 * DrainProcedure.HandOverPages),
            new WorkerFleet.Worker("sub", sub1, MemoryMiB * 256L),
            new WorkerFleet.Worker("sub", sub2, MemoryMiB * 256L),
        ], Path.Combine(root, "hosts"), logs, ct, new Dictionary<string, string>(workerEnvironment) { ["SEMIGRATE__Fleet__ReportSeconds"] = "2" },
            isolated: true);
        await LocalOperator.EnrolAsync(host.Services, fleet, ct);
        DrainReport? report = null;
        try
        {
            foreach (var name in Names)
            {
                say($"drain: booting {name} ({MemoryMiB} MiB, a 32 MiB workload) on {source}");
                await RunningGuestTrial.StartOnSourceAsync(fleet[source].Pid, name, MemoryMiB, 32, ct);
            }
            var store = host.Services.GetRequiredService<IDocumentStore>();
            await RunningGuestTrial.UntilAsync(() => Names.All(n => LiveGuest.PassesIn(Serial(guests, n)).Count >= 2), TimeSpan.FromMinutes(3), ct);
            say("drain: both guests run; waiting for every host's report to the fleet inventory");
            var hosts = new[] { source, main, sub1, sub2 };
            var until = DateTime.UtcNow.AddMinutes(1);
            while (!((await FleetInventory.ReadAsync(store, ct)) is var f && hosts.All(h => f.Hosts.Any(x => x.Host == h))
                && f.Hosts.Single(x => x.Host == source).Guests.Count(g => g.Running) == Names.Length))
            {
                if (DateTime.UtcNow > until)
                {
                    throw new InvalidOperationException("the hosts did not all report to the fleet inventory within a minute");
                }
                await Task.Delay(200, ct);
            }
            say($"drain: draining {source}");
            report = await host.Services.GetRequiredService<DrainRunner>().DrainAsync(
                await OperatorAuthority.OrderAsync(host.Services, new DrainHost(Guid.NewGuid(), source, MigrationMode.Semigrate, [], 2), [main], ct, onto: hosts), ct);
            foreach (var moved in report.Moved)
            {
                var serial = Path.Combine(root, "hosts", moved.To, "migrations", moved.MigrationId.ToString("N"), "vm", "serial.log");
                await RunningGuestTrial.UntilAsync(() => File.Exists(serial) && LiveGuest.PassesIn(File.ReadAllText(serial)).Count >= 2, TimeSpan.FromMinutes(3), ct);
                var passes = LiveGuest.PassesIn(File.ReadAllText(serial));
                say($"drain: {moved.Vm} runs at {moved.To}: pass {passes[^1].Pass}, {passes[^1].Errors} pages ever wrong; " +
                    $"semigrate audit {await RunningGuestTrial.AuditAsync(host.Services, moved.MigrationId, ct) ?? "passed"}");
            }
            foreach (var stays in report.NotMoved)
            {
                say($"drain: {stays.Vm} stays at {source}: {stays.Reason}");
            }
            return report;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
            fleet.Dispose();
            foreach (var name in Names)
            {
                RunningGuestTrial.StopSourceGuest(Path.Combine(guests, name));
            }
            await LocalOperator.ForgetAsync(host.Services, [source, main, sub1, sub2], report?.Moved.Select(m => m.VmId) ?? []);
            if (keepDir is null)
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    private static string Serial(string guests, string name) => File.Exists(Path.Combine(guests, name, "serial.log")) ? File.ReadAllText(Path.Combine(guests, name, "serial.log")) : "";
}
