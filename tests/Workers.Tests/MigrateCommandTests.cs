using System.Text.Json;
using SEmigrate.TestSupport;
using SEmigrate.Workers.Processes;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Tests;

/// <summary>`semigrate migrate` as an operator runs it, against running host workers.</summary>
public class MigrateCommandTests(RealGuestFixture guest, PostgresFixture postgres) : IClassFixture<RealGuestFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Migrate_moves_the_vm_and_prints_the_outcome_as_json()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var run = await MigrationRun.StartAsync(postgres, StepPolicies.Default, ct);
        var audit = $"semigrate-audit-{Guid.NewGuid():N}"[..28];
        var environment = new Dictionary<string, string>(await ServicesScript.SettingsAsync())
        {
            ["SEMIGRATE__Postgres__Schema"] = postgres.Schema,
            ["SEMIGRATE__Audit__Queue"] = audit,
        };
        try
        {
            var r = await SemigrateProcess.RunAsync(environment, "migrate", "--guest", Path.GetFileName(guest.Guest.Directory), "--source", run.Source,
                "--main", $"{run.Main}:80M", "--sub", $"{run.Sub1}:30000", "--sub", $"{run.Sub2}:30000", "--plain-process", "vaultdb", "--json");

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
        finally
        {
            await WorkerFleet.DeleteQueuesAsync(new Uri(environment["SEMIGRATE__RabbitMq__Uri"]), [], [], audit);
        }
    }
}
