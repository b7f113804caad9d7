using System.Diagnostics;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Embedded;
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
            await run.FleetOnceAsync(f => run.AllReported(f)
                && f.Hosts.Single(h => h.Host == run.Source).Guests.Count == 2, "every host reported, the source with its two guests", ct);
            // A host the operator enrolled, seen a moment ago with more room than any other, whose worker
            // has stopped since (as a host of the test before this one is): no guest may go there.
            var dead = await EnrolDeadHostAsync(run, ct);

            var drain = await SemigrateProcess.RunAsync(await run.CommandEnvironmentAsync(postgres.Schema),
                "maintenance", "drain", run.Source, "--plain-process", "vaultdb", "--main", run.Main, "--main", dead, "--json");

            Assert.True(drain.ExitCode == 0, drain.Stdout + drain.Stderr);
            using var json = JsonDocument.Parse(drain.Stdout);
            Assert.Equal(run.Source, json.RootElement.GetProperty("drained").GetString());
            Assert.Empty(json.RootElement.GetProperty("notMoved").EnumerateArray());
            var moved = json.RootElement.GetProperty("moved").EnumerateArray().ToList();
            Assert.Equal(["db", "web"], moved.Select(m => m.GetProperty("vm").GetString()).Order());
            Assert.All(moved, m => Assert.Equal("switchedOver", m.GetProperty("state").GetString()));
            Assert.All(moved, m => Assert.NotEqual(run.Source, m.GetProperty("to").GetString()));
            Assert.All(moved, m => Assert.NotEqual(dead, m.GetProperty("to").GetString()));
            var vms = moved.Select(m => m.GetProperty("vmId").GetGuid()).ToList();
            foreach (var m in moved)
            {
                await run.AssertAuditedAsync(m.GetProperty("migrationId").GetGuid(), ct);
            }
            // The inventory follows: both VMs run where the report says, with their migration.
            var fleet = await run.FleetOnceAsync(f => vms.All(v => f.Vms.Any(x => x.Vm == v)), "the main hosts reported both VMs", ct);
            Assert.All(moved, m => Assert.Equal(m.GetProperty("to").GetString(), fleet.Vms.Single(v => v.Vm == m.GetProperty("vmId").GetGuid()).Host));
            Assert.All(fleet.Vms.Where(v => v.Vm is not null), v => Assert.Equal("SwitchedOver", v.LastState));
            foreach (var m in moved)
            {
                await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(m.GetProperty("migrationId").GetGuid(), m.GetProperty("vmId").GetGuid(), m.GetProperty("to").GetString()!)), ct);
            }
        }
        finally
        {
            guests.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task A_drain_schedule_is_kept_fired_once_when_due_skipped_while_its_last_run_runs_and_paused_or_deleted_on_request()
    {
        var ct = TestContext.Current.CancellationToken;
        var guests = Directory.CreateTempSubdirectory("semigrate-schedule-guests-");
        try
        {
            var dir = Directory.CreateDirectory(Path.Combine(guests.FullName, "web")).FullName;
            foreach (var file in new[] { "memory.elf", "vmlinuz" })
            {
                using var link = Process.Start("ln", [Path.Combine(guest.Guest.Directory, file), Path.Combine(dir, file)])!;
                await link.WaitForExitAsync(ct);
                Assert.Equal(0, link.ExitCode);
            }
            await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, guests: guests.FullName, sourceMaxMBps: 25);
            await run.FleetOnceAsync(f => run.AllReported(f), "every host reported", ct);
            var environment = await run.CommandEnvironmentAsync(postgres.Schema);
            Task<SemigrateProcess.Result> Semigrate(params string[] args) => SemigrateProcess.RunAsync(environment, ["maintenance", .. args]);

            // What is not a schedule is refused, naming the option.
            Assert.Contains("--cron 'every night'", (await Semigrate("schedule", run.Source, "--cron", "every night")).Stderr, StringComparison.Ordinal);
            Assert.Contains("--every 5s: ", (await Semigrate("schedule", run.Source, "--every", "5s")).Stderr, StringComparison.Ordinal);
            Assert.Equal(2, (await Semigrate("schedule", run.Source)).ExitCode);

            Assert.Contains("--main HOST", (await Semigrate("schedule", run.Source, "--id", "nightly", "--every", "1h")).Stderr, StringComparison.Ordinal);
            var created = await Semigrate("schedule", run.Source, "--id", "nightly", "--every", "1h", "--plain-process", "vaultdb", "--main", run.Main);
            Assert.True(created.ExitCode == 0, created.Stderr);
            var listed = await SchedulesAsync(Semigrate);
            Assert.True(listed.GetProperty("nextRun").GetDateTimeOffset() > DateTimeOffset.UtcNow.AddMinutes(59), $"{listed}");

            // Triggered, it fires once (another orchestrator's pass finds it running and skips it).
            Assert.Equal(0, (await Semigrate("trigger", "nightly")).ExitCode);
            var runner = ActivatorUtilities.CreateInstance<ScheduleRunner>(run.Host.Services);
            var runs = await runner.RunDueAsync(ct);
            var first = Assert.Single(runs);
            Assert.Equal(0, (await Semigrate("trigger", "nightly")).ExitCode);
            Assert.Empty(await runner.RunDueAsync(ct)); // its last run still runs: skipped
            Assert.Contains("the last run still runs", (await SchedulesAsync(Semigrate)).GetProperty("lastSkip").GetString(), StringComparison.Ordinal);
            await first;
            var ran = await SchedulesAsync(Semigrate);
            var moved = ran.GetProperty("lastReport").GetProperty("moved").EnumerateArray().Single();
            Assert.Equal(("web", "switchedOver"), (moved.GetProperty("vm").GetString(), moved.GetProperty("state").GetString()));
            await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(moved.GetProperty("migrationId").GetGuid(), moved.GetProperty("vmId").GetGuid(), moved.GetProperty("to").GetString()!)), ct);

            // Paused, a trigger does not fire it; deleted, it is gone.
            Assert.Equal(0, (await Semigrate("pause", "nightly")).ExitCode);
            Assert.Equal(0, (await Semigrate("trigger", "nightly")).ExitCode);
            Assert.Empty(await runner.RunDueAsync(ct));
            Assert.True((await SchedulesAsync(Semigrate)).GetProperty("paused").GetBoolean());
            Assert.Equal(0, (await Semigrate("delete", "nightly")).ExitCode);
            Assert.Equal(2, (await Semigrate("delete", "nightly")).ExitCode);
            Assert.Equal("[]", (await Semigrate("schedules", "--json")).Stdout.Trim());
        }
        finally
        {
            guests.Delete(recursive: true);
        }
    }

    /// <summary>Enrols a host that reports (just now: main and sub, with room for 4 GiB) but runs no worker.</summary>
    private static async Task<string> EnrolDeadHostAsync(MigrationRun run, CancellationToken ct)
    {
        var dead = $"dead-{Guid.NewGuid().ToString("N")[..8]}";
        await run.EnrolAbsentAsync(dead, ct);
        await using var session = run.Host.Services.GetRequiredService<IDocumentStore>().LightweightSession();
        session.Events.Append(HostStreams.Of(dead), new HostSeen(dead, ["main", "sub"], 1L << 20, 0, [], [], DateTimeOffset.UtcNow));
        await session.SaveChangesAsync(ct);
        await run.FleetOnceAsync(f => f.Hosts.Any(h => h.Host == dead), "the dead host in the fleet", ct);
        return dead;
    }

    private static async Task<JsonElement> SchedulesAsync(Func<string[], Task<SemigrateProcess.Result>> semigrate)
    {
        var listed = await semigrate(["schedules", "--json"]);
        Assert.True(listed.ExitCode == 0, listed.Stderr);
        return JsonDocument.Parse(listed.Stdout).RootElement.EnumerateArray().Single(s => s.GetProperty("id").GetString() == "nightly").Clone();
    }
}
