using System.CommandLine;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate maintenance drain HOST`: migrate every guest off a host now.</summary>
public static class MaintenanceCommand
{
    public static RootCommand AddMaintenanceCommand(this RootCommand root)
    {
        var host = new Argument<string>("HOST") { Description = "The host to drain (its worker reports its guests to the fleet inventory)" };
        var mode = new Option<string>("--mode") { Description = "semigrate, allenc or noenc, for every migration", DefaultValueFactory = _ => "semigrate" };
        var plain = new Option<string[]>("--plain-process") { Description = "A process whose memory is already encrypted and may travel as-is (repeatable)" };
        var concurrent = new Option<int>("--max-concurrent") { Description = "Migrations at once (default 2)", DefaultValueFactory = _ => 2 };
        var json = new Option<bool>("--json") { Description = "Print the report as one JSON object: {\"drained\",\"moved\":[{\"vm\",\"to\",\"state\"}],\"notMoved\":[{\"vm\",\"reason\"}]}" };
        var drain = new Command("drain", "Migrate every guest off HOST, placed across the other hosts of the fleet inventory; exit 0 when all moved, 1 when one did not")
        {
            host, mode, plain, concurrent, json,
        };
        drain.SetAction(async (parse, ct) =>
        {
            MigrationMode m;
            try
            {
                m = MigrationModes.Parse(parse.GetValue(mode)!);
            }
            catch (FormatException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            if (parse.GetValue(concurrent) is < 1 or > 16)
            {
                await Console.Error.WriteLineAsync("semigrate: --max-concurrent must be 1 to 16");
                return 2;
            }
            using var orchestrator = Orchestrator.Build(StepPolicies.Default);
            await orchestrator.StartAsync(ct);
            DrainReport report;
            try
            {
                report = await orchestrator.Services.GetRequiredService<DrainRunner>().DrainAsync(
                    new DrainHost(Guid.NewGuid(), parse.GetValue(host)!, m, parse.GetValue(plain) ?? [], parse.GetValue(concurrent)), ct);
            }
            catch (InvalidOperationException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            finally
            {
                await orchestrator.StopAsync(CancellationToken.None);
            }
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(report, MigrateCommand.Json));
            }
            else
            {
                Console.WriteLine($"drained {report.Drained}: {report.Moved.Count} moved, {report.NotMoved.Count} not");
                foreach (var v in report.Moved)
                {
                    Console.WriteLine($"  {v.Vm} -> {v.To}: {v.State} (VM {v.VmId}, migration {v.MigrationId})");
                }
                foreach (var v in report.NotMoved)
                {
                    Console.WriteLine($"  {v.Vm} stays: {v.Reason}");
                }
            }
            return report.NotMoved.Count == 0 ? 0 : 1;
        });
        root.Subcommands.Add(new Command("maintenance", "Host maintenance: move every VM off a host") { drain });
        return root;
    }
}
