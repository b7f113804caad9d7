using Marten;
using Microsoft.Extensions.Options;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Settings;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Embedded;

/// <summary>The embedded engine's host maintenance: <see cref="DrainProcedure"/> with the fleet inventory
/// read from Marten and each guest's migration run by <see cref="EmbeddedEngine"/> (journaled and
/// resumable like any other). A host that has not reported for three report intervals, or whose worker
/// does not consume its step queue now (stopped since its last report), is no target.</summary>
public sealed class DrainRunner(EmbeddedEngine engine, IDocumentStore store, HostWorkers workers, IOptions<FleetOptions> fleet) : IDrainSteps
{
    public Task<DrainReport> DrainAsync(DrainHost drain, CancellationToken ct) => new DrainProcedure(this).RunAsync(drain, ct);

    public async Task<DrainInventory> InventoryAsync(string host, CancellationToken ct)
    {
        var inventory = await FleetInventory.ReadAsync(store, ct);
        var drained = inventory.Hosts.FirstOrDefault(h => h.Host == host)
            ?? throw new InvalidOperationException($"host {host} is not in the fleet inventory (its worker reports when it starts: `semigrate fleet`)");
        var fresh = DateTimeOffset.UtcNow - TimeSpan.FromSeconds(3 * fleet.Value.ReportSeconds + 10);
        // A guest it took over moves on from there like its own, through the host's source role.
        var noSource = drained.Roles.Contains("source") ? null : $"host {host} does not run the source role (start its worker with --role {string.Join(',', drained.Roles.Append("source"))})";
        var alive = new List<DrainTarget>();
        foreach (var h in inventory.Hosts.Where(h => h.Host != host && h.LastSeen >= fresh))
        {
            if (await workers.IsRunningAsync(h.Host, ct))
            {
                alive.Add(new DrainTarget(h.Host, h.Roles.Contains("main"), h.Roles.Contains("main") || h.Roles.Contains("sub"), Math.Max(0, h.CapacityPages - h.UsedPages)));
            }
        }
        return new DrainInventory(
            [.. drained.Guests.Select(g => new DrainGuest(g.Name, g.Pages, g.Running, HandOverPages: g.HandOverPages)),
                .. drained.Vms.Select(v => new DrainGuest(v.Guest ?? $"VM {v.Vm}", v.LocalPages + v.RemotePages, v.Running,
                    !v.Running ? "a memory dump's VM taken over here: nothing runs to move (`semigrate vm stop` ends it)" : v.Guest is null ? "it has no guest name here" : noSource))],
            alive);
    }

    public async Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => await Task.WhenAll(steps);

    public Task<MigrationOutcome> MigrateAsync(MigrationRequest request, CancellationToken ct) => engine.RunAsync(request, null, ct);
}
