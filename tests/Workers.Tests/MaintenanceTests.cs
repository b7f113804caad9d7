using System.Diagnostics;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Audit;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>Host maintenance on the embedded engine with real workers: `semigrate maintenance drain`
/// moves every guest off a host, placed from the fleet inventory, and the inventory follows.</summary>
public class MaintenanceTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task A_drain_moves_every_guest_off_its_host_to_the_others_and_the_inventory_follows()
    {
        var ct = TestContext.Current.CancellationToken;
        // Two guests on the source (the fixture's memory dump under two names: hard links, no copies).
        var guests = Directory.CreateTempSubdirectory("semigrate-drain-guests-");
        try
        {
            foreach (var name in new[] { "web", "db" })
            {
                var dir = Directory.CreateDirectory(Path.Combine(guests.FullName, name)).FullName;
                foreach (var file in new[] { "memory.elf", "vmlinuz" })
                {
                    using var link = Process.Start("ln", [Path.Combine(guest.Guest.Directory, file), Path.Combine(dir, file)])!;
                    await link.WaitForExitAsync(ct);
                    Assert.Equal(0, link.ExitCode);
                }
            }
            await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, guests: guests.FullName);
            var store = run.Host.Services.GetRequiredService<IDocumentStore>();
            await EventuallyAsync(store, f => new[] { run.Source, run.Main, run.Sub1, run.Sub2 }.All(h => f.Hosts.Any(x => x.Host == h))
                && f.Hosts.Single(h => h.Host == run.Source).Guests.Count == 2, "every host reported, the source with its two guests", ct);

            var drain = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema),
                "maintenance", "drain", run.Source, "--plain-process", "vaultdb", "--json");

            Assert.True(drain.ExitCode == 0, drain.Stdout + drain.Stderr);
            using var json = JsonDocument.Parse(drain.Stdout);
            Assert.Equal(run.Source, json.RootElement.GetProperty("drained").GetString());
            Assert.Empty(json.RootElement.GetProperty("notMoved").EnumerateArray());
            var moved = json.RootElement.GetProperty("moved").EnumerateArray().ToList();
            Assert.Equal(["db", "web"], moved.Select(m => m.GetProperty("vm").GetString()).Order());
            Assert.All(moved, m => Assert.Equal("switchedOver", m.GetProperty("state").GetString()));
            Assert.All(moved, m => Assert.NotEqual(run.Source, m.GetProperty("to").GetString()));
            var vms = moved.Select(m => m.GetProperty("vmId").GetGuid()).ToList();
            foreach (var m in moved)
            {
                await run.AssertAuditedAsync(m.GetProperty("migrationId").GetGuid(), ct);
            }
            // The inventory follows: both VMs run where the report says, with their migration.
            var fleet = await EventuallyAsync(store, f => vms.All(v => f.Vms.Any(x => x.Vm == v)), "the main hosts reported both VMs", ct);
            Assert.All(moved, m => Assert.Equal(m.GetProperty("to").GetString(), fleet.Vms.Single(v => v.Vm == m.GetProperty("vmId").GetGuid()).Host));
            Assert.All(fleet.Vms.Where(v => v.Vm is not null), v => Assert.Equal("SwitchedOver", v.LastState));
            foreach (var m in moved)
            {
                await run.Steps.StopVmAsync(new StopVm(m.GetProperty("migrationId").GetGuid(), m.GetProperty("vmId").GetGuid(), m.GetProperty("to").GetString()!), ct);
            }
        }
        finally
        {
            guests.Delete(recursive: true);
        }
    }

    private static async Task<FleetInventory.Fleet> EventuallyAsync(IDocumentStore store, Func<FleetInventory.Fleet, bool> holds, string what, CancellationToken ct)
    {
        var until = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var fleet = await FleetInventory.ReadAsync(store, ct);
            if (holds(fleet))
            {
                return fleet;
            }
            Assert.True(DateTime.UtcNow < until, $"not within 30 s: {what}; the fleet: {JsonSerializer.Serialize(fleet)}");
            await Task.Delay(200, ct);
        }
    }
}
