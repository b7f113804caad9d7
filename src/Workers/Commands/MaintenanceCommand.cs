using System.CommandLine;
using System.Text.Json;
using Marten;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Trust;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workers.Roles;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Temporal;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate maintenance`: drain a host now, or on a schedule (create, list, pause, unpause,
/// trigger, delete) that the orchestrator's worker runs.</summary>
public static class MaintenanceCommand
{
    /// <summary>The hosts a drain may make main hosts: named by the operator, since they get the guests' data keys.</summary>
    private static Option<string[]> MainHostsOption() => new("--main")
    {
        Description = "A host that may be a guest's main host and so get its data key (repeatable; at least one): the signed order allows only these",
    };

    public static RootCommand AddMaintenanceCommand(this RootCommand root)
    {
        var host = new Argument<string>("HOST") { Description = "The host to drain (its worker reports its guests to the fleet inventory)" };
        var mode = new Option<string>("--mode") { Description = "semigrate, allenc or noenc, for every migration", DefaultValueFactory = _ => "semigrate" };
        var plain = new Option<string[]>("--plain-process") { Description = "A process whose memory is already encrypted and may travel as-is (repeatable)" };
        var concurrent = new Option<int>("--max-concurrent") { Description = "Migrations at once (default 2)", DefaultValueFactory = _ => 2 };
        var json = new Option<bool>("--json") { Description = "Print the report as one JSON object: {\"drained\",\"moved\":[{\"vm\",\"to\",\"state\"}],\"notMoved\":[{\"vm\",\"reason\"}]}" };
        var onto = new Option<string[]>("--onto") { Description = "A host the guests may go to (repeatable; default: every enrolled host); the signed order names only these" };
        var mains = MainHostsOption();
        var drain = new Command("drain", "Migrate every guest off HOST, placed across the other hosts of the fleet inventory; exit 0 when all moved, 1 when one did not")
        {
            host, mode, plain, concurrent, json, onto, mains,
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
                report = await orchestrator.Services.GetRequiredService<DrainRunner>().DrainAsync(await OperatorAuthority.OrderAsync(orchestrator.Services,
                    new DrainHost(Guid.NewGuid(), parse.GetValue(host)!, m, parse.GetValue(plain) ?? [], parse.GetValue(concurrent)), parse.GetValue(mains) ?? [], ct,
                    onto: parse.GetValue(onto) is { Length: > 0 } only ? only : null), ct);
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
        root.Subcommands.Add(new Command("maintenance", "Host maintenance: move every VM off a host, now or on a schedule")
        {
            drain, Schedule(), Schedules(), Change("pause", "paused", "Stop a schedule from firing (until unpause)", s => s with { Paused = true }, h => h.PauseAsync()),
            Change("unpause", "unpaused", "Let a paused schedule fire again (from its next time on)",
                s => s with { Paused = false, NextRun = s.NextAfter(DateTimeOffset.UtcNow) }, h => h.UnpauseAsync()),
            Change("trigger", "triggered: its drain runs within seconds", "Run a schedule's drain now (once; its times stay)", s => s with { NextRun = DateTimeOffset.UtcNow },
                h => h.TriggerAsync()),
            Delete(),
        });
        return root;
    }

    /// <summary>`maintenance schedule HOST --cron EXPR | --every DURATION`: creates or replaces a schedule,
    /// which `worker --role orchestrator` runs (the embedded engine's schedules, kept in Marten).</summary>
    private static Command Schedule()
    {
        var host = new Argument<string>("HOST") { Description = "The host to drain" };
        var id = new Option<string?>("--id") { Description = "The schedule's name (default drain-HOST)" };
        var cron = new Option<string?>("--cron") { Description = "When, as a cron expression in UTC (minute hour day month weekday), e.g. \"0 3 * * 0\"" };
        var every = new Option<string?>("--every") { Description = "Or how often: a number and s, m, h or d (at least 10s), e.g. 12h" };
        var overlap = new Option<string>("--overlap") { Description = "A run that comes while the last one runs: skip (default) or allow-all", DefaultValueFactory = _ => "skip" };
        overlap.AcceptOnlyFromAmong("skip", "allow-all");
        var mode = new Option<string>("--mode") { Description = "semigrate, allenc or noenc", DefaultValueFactory = _ => "semigrate" };
        var plain = new Option<string[]>("--plain-process") { Description = "A process whose memory is already encrypted (repeatable)" };
        var concurrent = new Option<int>("--max-concurrent") { Description = "Migrations at once (default 2)", DefaultValueFactory = _ => 2 };
        var validDays = new Option<int>("--valid-days")
        {
            Description = "How long the operator's signed order behind the schedule lets it drain (default 90 days; make the schedule again to renew)",
            DefaultValueFactory = _ => 90,
        };
        var mains = MainHostsOption();
        var command = new Command("schedule", "Drain HOST on a schedule, run by the orchestrator's worker") { host, id, cron, every, overlap, mode, plain, concurrent, validDays, mains };
        command.SetAction(async (parse, ct) =>
        {
            var (c, e) = (parse.GetValue(cron), parse.GetValue(every));
            TimeSpan? interval = null;
            var problem = (c, e) switch
            {
                (null, null) or (not null, not null) => "name one of --cron and --every",
                (not null, _) => DrainSchedule.CronProblem(c),
                _ => (interval = Interval(e!)) is null ? $"--every {e}: a number and s, m, h or d, at least 10s (e.g. 12h)" : null,
            };
            MigrationMode m = default;
            try
            {
                m = MigrationModes.Parse(parse.GetValue(mode)!);
            }
            catch (FormatException x)
            {
                problem ??= x.Message;
            }
            if (problem is not null)
            {
                await Console.Error.WriteLineAsync($"semigrate: {problem}");
                return 2;
            }
            var name = parse.GetValue(id) ?? $"drain-{parse.GetValue(host)}";
            var schedule = new DrainSchedule(name, parse.GetValue(host)!, c, interval, parse.GetValue(overlap) == "skip" ? ScheduleOverlap.Skip : ScheduleOverlap.AllowAll,
                m, parse.GetValue(plain) ?? [], Math.Clamp(parse.GetValue(concurrent), 1, 16), Paused: false, NextRun: DateTimeOffset.MinValue);
            schedule = schedule with { NextRun = schedule.NextAfter(DateTimeOffset.UtcNow) };
            using var services = AuditTrail();
            try
            {
                var order = await OperatorAuthority.OrderAsync(services.Services, new DrainHost(Guid.Empty, schedule.Host, m, schedule.PlainProcesses), parse.GetValue(mains) ?? [], ct,
                    TimeSpan.FromDays(Math.Clamp(parse.GetValue(validDays), 1, 366)));
                schedule = schedule with { Order = order.Order };
            }
            catch (InvalidOperationException x)
            {
                await Console.Error.WriteLineAsync($"semigrate: cannot sign the schedule's drain order: {x.Message}");
                return 2;
            }
            if (await TemporalAsync() is { } temporal)
            {
                return await OnTemporalAsync(async () =>
                {
                    await TemporalDrainSchedules.CreateAsync(temporal, schedule);
                    Console.WriteLine($"Temporal schedule {name}: drain {schedule.Host} {(c is null ? $"every {interval}" : $"at '{c}' (UTC)")}");
                });
            }
            await using var session = services.Services.GetRequiredService<IDocumentStore>().LightweightSession();
            session.Store(schedule);
            await session.SaveChangesAsync(ct);
            Console.WriteLine($"schedule {name}: drain {schedule.Host} {(c is null ? $"every {interval}" : $"at '{c}' (UTC)")}, next at {schedule.NextRun:u}");
            return 0;
        });
        return command;
    }

    private static Command Schedules()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var command = new Command("schedules", "List the drain schedules: when each runs next, and how its last run went") { json };
        command.SetAction(async (parse, ct) =>
        {
            if (await TemporalAsync() is { } temporal)
            {
                return await OnTemporalAsync(async () =>
                {
                    var lines = await TemporalDrainSchedules.ListAsync(temporal, ct);
                    Console.WriteLine(parse.GetValue(json) ? JsonSerializer.Serialize(lines) : lines.Count == 0 ? "no Temporal schedules" : string.Join('\n', lines));
                });
            }
            using var services = AuditTrail();
            await using var query = services.Services.GetRequiredService<IDocumentStore>().QuerySession();
            var all = (await query.Query<DrainSchedule>().ToListAsync(ct)).OrderBy(s => s.Id, StringComparer.Ordinal).ToList();
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(all, MigrateCommand.Json));
                return 0;
            }
            if (all.Count == 0)
            {
                Console.WriteLine("no drain schedules");
            }
            foreach (var s in all)
            {
                Console.WriteLine($"{s.Id,-24} drain {s.Host,-16} {(s.Cron is { } c ? $"cron '{c}'" : $"every {s.Every}"),-22} {(s.Paused ? "PAUSED" : $"next {s.NextRun:u}")}" +
                    (s.LastRun is { } at ? $"  last {at:u}: {(s.LastReport is { } r ? $"{r.Moved.Count} moved, {r.NotMoved.Count} not" : "running")}" : "") +
                    (s.LastProblem is { } p ? $"  (failed: {p})" : "") + (s.LastSkip is { } skip ? $"  ({skip})" : ""));
            }
            return 0;
        });
        return command;
    }

    private static Command Change(string name, string done, string description, Func<DrainSchedule, DrainSchedule> change,
        Func<Temporalio.Client.Schedules.ScheduleHandle, Task> onTemporal)
    {
        var id = new Argument<string>("ID") { Description = "The schedule's name (`maintenance schedules` lists them)" };
        var command = new Command(name, description) { id };
        command.SetAction(async (parse, ct) =>
        {
            if (await TemporalAsync() is { } temporal)
            {
                return await OnTemporalAsync(async () =>
                {
                    await onTemporal(temporal.GetScheduleHandle(parse.GetValue(id)!));
                    Console.WriteLine($"Temporal schedule {parse.GetValue(id)}: {done}");
                });
            }
            using var services = AuditTrail();
            await using var session = services.Services.GetRequiredService<IDocumentStore>().LightweightSession();
            if (await session.LoadAsync<DrainSchedule>(parse.GetValue(id)!, ct) is not { } schedule)
            {
                await Console.Error.WriteLineAsync($"semigrate: no drain schedule {parse.GetValue(id)}");
                return 2;
            }
            session.Store(change(schedule));
            await session.SaveChangesAsync(ct);
            Console.WriteLine($"schedule {schedule.Id}: {done}");
            return 0;
        });
        return command;
    }

    private static Command Delete()
    {
        var id = new Argument<string>("ID") { Description = "The schedule's name" };
        var command = new Command("delete", "Delete a drain schedule (a drain it started runs to its end)") { id };
        command.SetAction(async (parse, ct) =>
        {
            if (await TemporalAsync() is { } temporal)
            {
                return await OnTemporalAsync(async () =>
                {
                    await temporal.GetScheduleHandle(parse.GetValue(id)!).DeleteAsync();
                    Console.WriteLine($"Temporal schedule {parse.GetValue(id)}: deleted");
                });
            }
            using var services = AuditTrail();
            await using var session = services.Services.GetRequiredService<IDocumentStore>().LightweightSession();
            if (await session.LoadAsync<DrainSchedule>(parse.GetValue(id)!, ct) is null)
            {
                await Console.Error.WriteLineAsync($"semigrate: no drain schedule {parse.GetValue(id)}");
                return 2;
            }
            session.Delete<DrainSchedule>(parse.GetValue(id)!);
            await session.SaveChangesAsync(ct);
            Console.WriteLine($"schedule {parse.GetValue(id)}: deleted");
            return 0;
        });
        return command;
    }

    /// <summary>The Temporal client when Temporal:Address is set: schedules are then Temporal's.</summary>
    private static async Task<Temporalio.Client.ITemporalClient?> TemporalAsync()
    {
        var o = SemigrateHost.CreateBuilder().Configuration.GetSection(TemporalOptions.Section).Get<TemporalOptions>();
        return o is { IsConfigured: true }
            ? await Temporalio.Client.TemporalClient.ConnectAsync(o.ConnectOptions())
            : null;
    }

    /// <summary>A Temporal call; its refusal (unknown schedule, one that exists) in one line.</summary>
    private static async Task<int> OnTemporalAsync(Func<Task> call)
    {
        try
        {
            await call();
            return 0;
        }
        catch (Temporalio.Exceptions.RpcException e)
        {
            await Console.Error.WriteLineAsync($"semigrate: Temporal: {e.Message}");
            return 2;
        }
    }

    /// <summary>A process with the audit trail's Marten (where schedules are kept).</summary>
    private static Microsoft.Extensions.Hosting.IHost AuditTrail()
    {
        var builder = SemigrateHost.CreateBuilder();
        builder.AddAuditTrail();
        return builder.Build();
    }

    /// <summary>"90s", "30m", "12h", "7d": at least 10 s; null if not one.</summary>
    private static TimeSpan? Interval(string text)
    {
        if (text.Length < 2 || !long.TryParse(text[..^1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n))
        {
            return null;
        }
        TimeSpan? span = text[^1] switch
        {
            's' => TimeSpan.FromSeconds(n),
            'm' => TimeSpan.FromMinutes(n),
            'h' => TimeSpan.FromHours(n),
            'd' => TimeSpan.FromDays(n),
            _ => null,
        };
        return span >= TimeSpan.FromSeconds(10) ? span : null;
    }
}
