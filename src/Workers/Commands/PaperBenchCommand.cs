using System.CommandLine;
using System.Text.Json;
using SEmigrate.Contracts;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate bench paper`: the original paper's experiment on this machine. A running guest
/// with a memory workload is migrated in each mode to a main host holding about a third of it and two
/// sub-hosts; after the switch-over its workload runs on, paging. Per mode: migration time and
/// downtime, the workload's own run time for its first passes at the main host (timed inside the
/// guest), page-ins and page-outs, whether the workload ever found a wrong page, CPU per role.</summary>
public static class PaperBenchCommand
{
    /// <summary>The original paper's headline, to read ours against: post-migration run time with remote
    /// paging, selective encryption against encrypting everything.</summary>
    private const double SeedRunRatio = 0.53;

    public static Command Paper()
    {
        var modes = new Option<string[]>("--mode") { Description = "semigrate, allenc or noenc (repeatable; default all three)" };
        var passes = new Option<int>("--passes") { Description = "Workload passes at the main host whose run time counts", DefaultValueFactory = _ => 10 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object: {\"modes\":[...]}" };
        var keep = new Option<DirectoryInfo?>("--keep") { Description = "Leave each mode's hosts' state and logs here" };
        var soak = new Option<string?>("--soak") { Description = "Keep each guest running on paging this long after its passes (e.g. 10m, 90s, 1h); every pass is checked" };
        var charts = new Option<DirectoryInfo>("--charts") { Description = "Write the PNG charts here", DefaultValueFactory = _ => new DirectoryInfo("paper-charts") };
        var evictions = new Option<string[]>("--eviction")
        {
            Description = "The main host's eviction, 2q or fifo (repeatable: each mode runs with each, interleaved; default 2q)",
        };
        var rounds = new Option<int>("--rounds") { Description = "Runs of every mode and eviction, interleaved (1 to 10)", DefaultValueFactory = _ => 1 };
        var command = new Command("paper", "The original paper's experiment: a running guest migrated in each mode, then run on remote paging")
        {
            modes, passes, soak, json, keep, charts, evictions, rounds,
        };
        command.SetAction(async (parse, ct) =>
        {
            MigrationMode[] chosen;
            TimeSpan watch;
            string[] policies;
            try
            {
                chosen = parse.GetValue(modes) is { Length: > 0 } m ? [.. m.Select(MigrationModes.Parse).Distinct()] : [MigrationMode.Semigrate, MigrationMode.AllEnc, MigrationMode.NoEnc];
                if (parse.GetValue(passes) is < 1 or > 1000)
                {
                    throw new FormatException("--passes must be from 1 to 1000");
                }
                watch = parse.GetValue(soak) is { } text ? Duration(text, "--soak") : TimeSpan.Zero;
                policies = parse.GetValue(evictions) is { Length: > 0 } e ? [.. e.Select(p => p.ToLowerInvariant()).Distinct()] : ["2q"];
                if (policies.FirstOrDefault(p => p is not ("2q" or "fifo")) is { } unknown)
                {
                    throw new FormatException($"--eviction {unknown}: 2q or fifo");
                }
                if (parse.GetValue(rounds) is < 1 or > 10)
                {
                    throw new FormatException("--rounds must be from 1 to 10");
                }
            }
            catch (FormatException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            void Say(string line) => Console.Error.WriteLine($"bench: {line}");
            Say("starting PostgreSQL and RabbitMQ (installing them if needed)");
            await DemoCommand.ServicesUpAsync(ct);
            var results = new List<RunningGuestTrial.Result>();
            // Every mode and eviction in turn, round after round: drift on this shared machine hits each alike.
            for (var round = 1; round <= parse.GetValue(rounds); round++)
            {
                foreach (var mode in chosen)
                {
                    foreach (var policy in policies)
                    {
                        Say($"{mode.ToWireName()}, eviction {policy}, round {round}: a running guest migrated, then {parse.GetValue(passes)} workload passes at the main host");
                        results.Add(await RunningGuestTrial.RunAsync(mode, parse.GetValue(passes), watch, parse.GetValue(keep)?.FullName, Say, ct, policy)
                            ?? throw new InvalidOperationException("bench paper needs root: the hosts run in mount namespaces and serve RAM over FUSE"));
                    }
                }
            }
            if (parse.GetValue(rounds) > 1 || policies.Length > 1)
            {
                // Per mode and eviction, the medians over the rounds.
                foreach (var g in results.GroupBy(r => (r.Mode, r.Eviction)))
                {
                    Say($"{g.Key.Mode}/{g.Key.Eviction} over {g.Count()} rounds: median pass at the source {RunningGuestTrial.Median(g.Select(r => r.SourcePassMs)):0} ms, " +
                        $"at the main host {RunningGuestTrial.Median(g.Select(r => r.MainPassMs)):0} ms (ratio {RunningGuestTrial.Median(g.Select(r => r.MainPassMs / Math.Max(1, r.SourcePassMs))):0.00}), " +
                        $"page-ins {RunningGuestTrial.Median(g.Select(r => (double)r.PageIns)):0}, MiB in {RunningGuestTrial.Median(g.Select(r => r.PagedInMiB)):0}, " +
                        $"CPU s main {RunningGuestTrial.Median(g.Select(r => r.CpuSeconds.Main)):0.0}, pages ever wrong {g.Max(r => r.WrongPages)}");
                }
            }
            Say($"charts: {string.Join(", ", PaperCharts.Write(results, parse.GetValue(charts)!.FullName))}");
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    modes = results.Select(r => new
                    {
                        r.Mode, r.Eviction, r.SourcePassMs, r.MainPassMs, r.MigrationSeconds, r.DowntimeSeconds, r.TransferSeconds, r.RunSeconds, r.PassesAtMain, r.WatchedSeconds, r.PageIns, r.PageOuts, ChecksumOk = r.WrongPages == 0 && r.State == "SwitchedOver",
                        r.CpuSeconds, r.PagedInMiB, r.PagedOutMiB, r.FaultedMiB, r.PeakResidentMiB, r.ShareMiB, r.PageInP99Ms,
                    }),
                }, MigrateCommand.Json));
            }
            else
            {
                string Row(string label, Func<RunningGuestTrial.Result, string> cell) => $"{label,-30}" + string.Concat(results.Select(r => $"{cell(r),14}"));
                Console.WriteLine(Row("", r => r.Mode));
                Console.WriteLine(Row("eviction", r => r.Eviction));
                Console.WriteLine(Row("median pass ms source/main", r => $"{r.SourcePassMs:0}/{r.MainPassMs:0}"));
                Console.WriteLine(Row("state", r => r.State));
                Console.WriteLine(Row("workload: pages ever wrong", r => $"{r.WrongPages}"));
                Console.WriteLine(Row("passes at the main host", r => $"{r.PassesAtMain}"));
                Console.WriteLine(Row("watched at the main host s", r => $"{r.WatchedSeconds:0}"));
                Console.WriteLine(Row("migration s", r => $"{r.MigrationSeconds:0.00}"));
                Console.WriteLine(Row("downtime s (pause to continue)", r => $"{r.DowntimeSeconds:0.00}"));
                Console.WriteLine(Row("  of which sending pages s", r => $"{r.TransferSeconds:0.00}"));
                Console.WriteLine(Row("run s (first passes, in guest)", r => $"{r.RunSeconds:0.00}"));
                Console.WriteLine(Row("page-ins / page-outs", r => $"{r.PageIns}/{r.PageOuts}"));
                Console.WriteLine(Row("MiB in / out", r => $"{r.PagedInMiB:0}/{r.PagedOutMiB:0}"));
                Console.WriteLine(Row("faulted MiB", r => $"{r.FaultedMiB:0}"));
                Console.WriteLine(Row("peak resident / share MiB", r => $"{r.PeakResidentMiB:0}/{r.ShareMiB:0}"));
                Console.WriteLine(Row("page-in p99 ms", r => $"{r.PageInP99Ms:0.0}"));
                Console.WriteLine(Row("CPU s source", r => $"{r.CpuSeconds.Source:0.00}"));
                Console.WriteLine(Row("CPU s main", r => $"{r.CpuSeconds.Main:0.00}"));
                Console.WriteLine(Row("CPU s sub-hosts", r => $"{r.CpuSeconds.Sub:0.00}"));
                Console.WriteLine(Row("CPU s broker", r => $"{r.CpuSeconds.Broker:0.00}"));
                Console.WriteLine($"downtime beyond sending the pages once: {string.Join(", ", results.Select(r => $"{r.Mode} {r.DowntimeSeconds - r.TransferSeconds:0.00} s"))} (target <= 1 s)");
                var (sem, all, none) = (results.FirstOrDefault(r => r.Mode == "semigrate"), results.FirstOrDefault(r => r.Mode == "allenc"), results.FirstOrDefault(r => r.Mode == "noenc"));
                if (sem is not null && all is not null && none is not null)
                {
                    Console.WriteLine($"run time semigrate/allenc {sem.RunSeconds / all.RunSeconds:0.00} (seed {SeedRunRatio:0.00}; target <= 0.7), semigrate/noenc {sem.RunSeconds / none.RunSeconds:0.00} (target <= 1.1)");
                }
            }
            return results.All(r => r.State == "SwitchedOver" && r.WrongPages == 0) ? 0 : 1;
        });
        return command;
    }

    /// <summary>A duration as an operator writes it: a number and s, m or h.</summary>
    public static TimeSpan Duration(string text, string option)
    {
        var unit = text.Length > 1 ? text[^1] : ' ';
        if (unit == ' ' || !double.TryParse(text[..^1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var n) || n <= 0
            || unit is not ('s' or 'm' or 'h') || n * (unit == 'h' ? 3600 : unit == 'm' ? 60 : 1) > 24 * 3600)
        {
            throw new FormatException($"{option} takes a duration up to a day, as 90s, 10m or 1h, not '{text}'");
        }
        return unit switch { 'h' => TimeSpan.FromHours(n), 'm' => TimeSpan.FromMinutes(n), _ => TimeSpan.FromSeconds(n) };
    }
}
