using System.Diagnostics;
using System.Text.Json;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>`semigrate migrate` as an operator runs it, against running host workers.</summary>
public class MigrateCommandTests(RealGuestFixture guest, PostgresFixture postgres)
    : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Migrate_moves_the_vm_and_prints_the_outcome_as_json()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        // The run's own audit queue: one auditor at a time appends this migration's events.
        var audit = run.AuditQueue;
        var environment = new Dictionary<string, string>(await ServicesScript.SettingsAsync())
        {
            ["SEMIGRATE__Postgres__Schema"] = postgres.Schema,
            ["SEMIGRATE__Audit__Queue"] = audit,
        };
        // The VM was migrated by this test's orchestrator a moment ago, and stopped since: another process
        // may migrate it again at once (the first one's locks went with its connection).
        var earlier = run.Request(guest.Guest.Directory, MigrationMode.Semigrate, mainCapacity: 20000, subCapacity: 30000);
        Assert.Equal(MigrationState.SwitchedOver, (await run.MigrateAsync(earlier, ct)).State);
        await run.Steps.StopVmAsync(TestOperator.Sign(new StopVm(earlier.MigrationId, earlier.Vm, run.Main)), ct);

        var r = await SemigrateProcess.RunAsync(environment, "migrate", "--guest", Path.GetFileName(guest.Guest.Directory), "--source", run.Source,
            "--main", $"{run.Main}:80M", "--sub", $"{run.Sub1}:30000", "--sub", $"{run.Sub2}:30000", "--plain-process", "vaultdb", "--vm", earlier.Vm.ToString(), "--json");

        Assert.True(r.ExitCode == 0, r.Stderr);
        using var outcome = JsonDocument.Parse(r.Stdout);
        Assert.Equal("switchedOver", outcome.RootElement.GetProperty("state").GetString());
        var transfers = outcome.RootElement.GetProperty("transfers").EnumerateArray().ToList();
        Assert.Equal(3, transfers.Count);
        Assert.Equal(outcome.RootElement.GetProperty("pages").GetProperty("total").GetInt64(), transfers.Sum(t => t.GetProperty("pages").GetInt64()));
        // --main NAME:80M is 20,480 pages: the main host is filled to within a chunk of it.
        var atMain = outcome.RootElement.GetProperty("placement").GetProperty("assignments")[0].GetProperty("pages").GetInt64();
        Assert.InRange(atMain, 80 * 256 - 512, 80 * 256);
    }

    [Fact]
    public async Task Ctrl_c_asks_first_and_a_second_one_cancels_and_waits_until_every_destination_has_let_go()
    {
        var ct = TestContext.Current.CancellationToken;
        // 4 MB/s: the transfers take tens of seconds, so the Ctrl+C lands in them.
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct, sourceMaxMBps: 4);
        // The run's own audit queue: one auditor at a time appends this migration's events.
        var audit = run.AuditQueue;
        var vm = Guid.NewGuid();
        // As from a terminal: a test host started in the background (CI, `test.sh &`) passes SIGINT on
        // ignored, and .NET leaves an ignored SIGINT ignored; env resets it to the default first.
        var start = new ProcessStartInfo("env",
            ["--default-signal=INT", Path.Combine(AppContext.BaseDirectory, "semigrate"), "migrate", "--guest", Path.GetFileName(guest.Guest.Directory), "--source", run.Source, "--main", $"{run.Main}:80M",
             "--sub", $"{run.Sub1}:30000", "--sub", $"{run.Sub2}:30000", "--vm", vm.ToString(), "--json"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var (key, value) in await ServicesScript.SettingsAsync())
        {
            start.Environment[key] = value;
        }
        start.Environment["SEMIGRATE__Postgres__Schema"] = postgres.Schema;
        start.Environment["SEMIGRATE__Audit__Queue"] = audit;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        try
        {
            var until = DateTime.UtcNow.AddSeconds(60);
            while (!run.HoldsPagesOf(run.Main, vm))
            {
                Assert.True(DateTime.UtcNow < until && !process.HasExited,
                    $"the transfer never started{(process.HasExited ? $": migrate exited {process.ExitCode}: {await stderr}" : "")}");
                await Task.Delay(100, ct);
            }

            await InterruptAsync(process);
            await Task.Delay(1500, ct);
            Assert.False(process.HasExited, "one Ctrl+C only asks");
            await InterruptAsync(process);
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            await process.WaitForExitAsync(timeout.Token);

            var said = string.Join('\n', (await stderr).Split('\n').Where(l => l.StartsWith("semigrate:", StringComparison.Ordinal)));
            Assert.True(process.ExitCode == 1, $"exit code {process.ExitCode}: {said}");
            Assert.Contains("press Ctrl+C again within 5 s to cancel", said, StringComparison.Ordinal);
            using var outcome = JsonDocument.Parse(await stdout);
            Assert.Equal("compensated", outcome.RootElement.GetProperty("state").GetString());
            Assert.StartsWith("cancelled", outcome.RootElement.GetProperty("reason").GetString(), StringComparison.Ordinal);
            foreach (var host in new[] { run.Main, run.Sub1, run.Sub2 })
            {
                Assert.False(run.HoldsPagesOf(host, vm), $"{host} still holds pages of the VM");
            }
            // The transfers were stopped at the source (not left sending while the destinations released).
            Assert.Contains("the migration stops its steps: cancelled, or another step failed: stopping its", run.LogOf(run.Source), StringComparison.Ordinal);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
            await WorkerFleet.DeleteQueuesAsync(new Uri((await ServicesScript.SettingsAsync())["SEMIGRATE__RabbitMq__Uri"]), [run.Main, run.Sub1, run.Sub2], [vm]);
        }
    }

    /// <summary>Ctrl+C, as a terminal sends it.</summary>
    private static async Task InterruptAsync(Process process)
    {
        using var kill = Process.Start("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!;
        await kill.WaitForExitAsync();
        Assert.Equal(0, kill.ExitCode);
    }
}
