using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using SEmigrate.Contracts;
using SEmigrate.Guest.Memory;
using SEmigrate.Guest.Qemu;
using SEmigrate.Introspection;
using SEmigrate.Introspection.Classification;
using SEmigrate.Introspection.Kernel;
using SEmigrate.MemoryServer.Client;
using SEmigrate.Workers.Bench;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate bench ...`: benchmarks that print figures measured in one run.</summary>
public static class BenchCommand
{
    public static RootCommand AddBenchCommand(this RootCommand root)
    {
        var bench = new Command("bench", "Benchmarks: print figures measured in one run");
        bench.Subcommands.Add(Introspect());
        bench.Subcommands.Add(Paging());
        bench.Subcommands.Add(PaperBenchCommand.Paper());
        bench.Subcommands.Add(EchoServer());
        root.Subcommands.Add(bench);
        return root;
    }

    public sealed record IntrospectFigures(
        string Guest, ulong GuestPages, double GuestGiB, int Runs, double ProfileSeconds, double MedianSeconds, double MedianCpuSeconds,
        double GBps, double GBpsPerCore, ulong Zero, ulong Plain, ulong Sealed, int Diagnostics);

    private static Command Introspect()
    {
        var mem = new Option<string[]>("--mem") { Description = "Boot a guest of this size and measure it (repeatable; default 256M and 4G)" };
        var guests = new Option<DirectoryInfo[]>("--guest") { Description = "Measure a guest made by `semigrate guest boot` instead (repeatable)" };
        var runs = new Option<int>("--runs") { Description = "Introspections per guest; the median is reported", DefaultValueFactory = _ => 5 };
        var keep = new Option<DirectoryInfo?>("--keep") { Description = "Boot guests into this folder and leave them there" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var command = new Command("introspect",
            "Introspection + classification time and GB/s of guest memory for real guests (target: at least 1 GB/s per core)")
        {
            mem, guests, runs, keep, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            var dirs = (parse.GetValue(guests) ?? []).Select(d => d.FullName).ToList();
            var sizes = parse.GetValue(mem) is { Length: > 0 } m ? m : dirs.Count == 0 ? ["256M", "4G"] : [];
            var work = parse.GetValue(keep)?.FullName ?? Directory.CreateTempSubdirectory("semigrate-bench-").FullName;
            WarnIfDebug();
            var figures = new List<IntrospectFigures>();
            try
            {
                foreach (var size in sizes)
                {
                    var mib = QemuGuest.ParseMemoryMiB(size);
                    // Marker processes scale with the guest: 1/16, 1/32 resident, 1/8 freed.
                    var spec = new GuestSpec(mib,
                    [
                        new GuestProcess("vaultdb", Math.Max(1, mib / 16), "VAULTDBMARK"),
                        new GuestProcess("webapp", Math.Max(1, mib / 32), "WEBAPPMARK"),
                        new GuestProcess("scratch", Math.Max(1, mib / 8), "STALEMARK", Freed: true),
                    ]);
                    var booted = await QemuGuest.BootAndDumpAsync(spec, Path.Combine(work, $"guest-{size}"),
                        s => Console.Error.WriteLine($"bench: {size}: {s}"), ct);
                    dirs.Add(booted.Directory);
                }
                foreach (var dir in dirs)
                {
                    figures.Add(Measure(QemuGuest.Load(dir), Math.Max(1, parse.GetValue(runs))));
                }
            }
            finally
            {
                if (parse.GetValue(keep) is null)
                {
                    Directory.Delete(work, recursive: true);
                }
            }
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(new { introspection = figures, targetGBpsPerCore = 1.0 }, IntrospectReport.JsonOptions));
                return 0;
            }
            Console.WriteLine($"{"guest",-12} {"pages",9} {"profile s",9} {"median s",9} {"CPU s",8} {"GB/s",7} {"GB/s/core",9}  classes (zero/plain/sealed)");
            foreach (var f in figures)
            {
                Console.WriteLine($"{f.Guest,-12} {f.GuestPages,9} {f.ProfileSeconds,9:0.000} {f.MedianSeconds,9:0.000} {f.MedianCpuSeconds,8:0.000} {f.GBps,7:0.00} {f.GBpsPerCore,9:0.00}  {f.Zero}/{f.Plain}/{f.Sealed}{(f.Diagnostics > 0 ? $"  ({f.Diagnostics} diagnostics)" : "")}");
            }
            Console.WriteLine("target: at least 1 GB/s of guest memory classified per core (introspection + classification; the profile is built once per kernel and cached)");
            return 0;
        });
        return command;
    }

    private static Command Paging()
    {
        var mode = new Option<string[]>("--mode") { Description = "semigrate, allenc or noenc (repeatable; default all three)" };
        var mib = new Option<int>("--mib") { Description = "Guest memory to store in bulk, in MiB (less than 1024 makes rounds too short to compare well)", DefaultValueFactory = _ => 1024 };
        var pageIns = new Option<int>("--page-ins") { Description = "Page-ins per in-flight level (at least 100 x in-flight)", DefaultValueFactory = _ => 3000 };
        var window = new Option<int>("--window") { Description = "Bulk messages in flight (ours and raw alike)", DefaultValueFactory = _ => BatchWindow.DefaultWindow };
        var messageKib = new Option<int>("--message-kib") { Description = "Bulk message size (ours and raw alike)", DefaultValueFactory = _ => BatchWindow.DefaultBatchBytes >> 10 };
        var warmUp = new Option<int>("--warmup-mib") { Description = "Bulk data each side sends before the measured rounds, in MiB (fresh processes take a few GiB to settle)", DefaultValueFactory = _ => 2048 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object with a modes array" };
        var command = new Command("paging",
            "Per mode: seal/open vs raw AesGcm, page-in latency vs a raw RabbitMQ round trip, bulk store vs raw publishing to a consumer, CPU s/GiB per role")
        {
            mode, mib, pageIns, window, messageKib, warmUp, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            List<MigrationMode> modes;
            try
            {
                modes = parse.GetValue(mode) is { Length: > 0 } m ? [.. m.Select(MigrationModes.Parse)] : [.. Enum.GetValues<MigrationMode>()];
            }
            catch (FormatException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            if (parse.GetValue(messageKib) is < 16 or > 8192 || parse.GetValue(mib) < 1 || parse.GetValue(warmUp) < 0 || parse.GetValue(window) < 1)
            {
                await Console.Error.WriteLineAsync("semigrate: --message-kib takes 16-8192, --mib and --window at least 1, --warmup-mib at least 0");
                return 2;
            }
            var builder = SemigrateHost.CreateBuilder();
            using var host = builder.Build();
            var rabbit = host.Services.GetRequiredService<IOptions<RabbitMqOptions>>().Value;
            await using var connection = await new ConnectionFactory { Uri = rabbit.Uri!, ClientProvidedName = "semigrate bench" }.CreateConnectionAsync(ct);
            var bench = new PagingBench(connection, new PagingBench.Settings(parse.GetValue(mib) * 256L,
                parse.GetValue(messageKib) << 10, parse.GetValue(window), parse.GetValue(pageIns), (long)parse.GetValue(warmUp) << 20),
                s => Console.Error.WriteLine($"bench: {s}"));
            WarnIfDebug();
            var figures = new List<PagingBench.ModeFigures>();
            foreach (var m in modes)
            {
                figures.Add(await bench.RunAsync(m, ct));
            }
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(new { modes = figures }, IntrospectReport.JsonOptions));
                return 0;
            }
            Console.WriteLine($"{"mode",-10} {"seal GB/s",10} {"raw AesGcm",10} {"page-in p50/p99 us",19} {"raw p50",8} {"bulk MB/s",10} {"raw bulk",9}   CPU s/GiB sender/server/broker");
            foreach (var f in figures)
            {
                Console.WriteLine($"{f.Mode,-10} {f.SealGBps,10:0.00} {f.RawAesGcmGBps,10:0.00} {f.PageInP50Us,9:0}/{f.PageInP99Us,-9:0} {f.RawRoundTripP50Us,8:0} {f.BulkMBps,10:0} {f.RawBulkMBps,9:0}   {f.CpuSecondsPerGiB.Sender:0.00}/{f.CpuSecondsPerGiB.MemoryServer:0.00}/{f.CpuSecondsPerGiB.Broker:0.00}");
                foreach (var p in f.PageIn)
                {
                    Console.WriteLine($"{"",-10} page-in x{p.InFlight,-2}: p50 {p.P50Us:0} us p99 {p.P99Us:0} us {p.PagesPerSecond:0} pages/s | raw p50 {p.RawP50Us:0} us p99 {p.RawP99Us:0} us {p.RawPerSecond:0}/s");
                }
                var sealRatio = f.RawAesGcmGBps > 0 ? f.SealGBps / f.RawAesGcmGBps : double.NaN;
                Console.WriteLine($"{"",-10} raw bulk CPU s/GiB sender/consumer/broker: {f.RawCpuSecondsPerGiB.Sender:0.00}/{f.RawCpuSecondsPerGiB.MemoryServer:0.00}/{f.RawCpuSecondsPerGiB.Broker:0.00}; ours per wire GiB: {f.CpuSecondsPerGiB.MemoryServer * f.BulkGuestMBps / f.BulkMBps:0.00} at the server");
                Console.WriteLine($"{"",-10} targets: seal {(double.IsNaN(sealRatio) ? "n/a" : $"{sealRatio:0.00}x raw")} (>= 0.8), page-in p50 {f.PageInP50Us / f.RawRoundTripP50Us:0.00}x raw (<= 1.3), bulk {f.BulkMBps / f.RawBulkMBps:0.00}x raw (>= 0.8); guest data {f.BulkGuestMBps:0} MB/s");
            }
            return 0;
        });
        return command;
    }

    private static void WarnIfDebug()
    {
#if DEBUG
        Console.Error.WriteLine("bench: this is a Debug build; figures that count come from `dotnet build -c Release`");
#endif
    }

    private static Command EchoServer()
    {
        var queue = new Option<string>("--queue") { Required = true };
        var replyBytes = new Option<int>("--reply-bytes") { Required = true };
        var command = new Command("echo-server", "The raw RabbitMQ.Client baseline's server (started by bench paging)") { queue, replyBytes };
        command.Hidden = true;
        command.SetAction(async (parse, ct) =>
        {
            using var host = SemigrateHost.CreateBuilder().Build();
            var rabbit = host.Services.GetRequiredService<IOptions<RabbitMqOptions>>().Value;
            await using var connection = await new ConnectionFactory { Uri = rabbit.Uri! }.CreateConnectionAsync(ct);
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
            await RawRabbit.ServeAsync(connection, parse.GetValue(queue)!, parse.GetValue(replyBytes), stop.Token);
            return 0;
        });
        return command;
    }

    private static IntrospectFigures Measure(BootedGuest guest, int runs)
    {
        var clock = Stopwatch.StartNew();
        var layout = KernelLayout.FromImage(KernelImage.Load(guest.KernelPath));
        var profileSeconds = clock.Elapsed.TotalSeconds;
        var plain = guest.Spec.Processes.Where(p => !p.Freed).Select(p => p.Name).ToHashSet();
        var wall = new List<double>();
        var cpu = new List<double>();
        ClassificationMap map = null!;
        GuestIntrospection result = null!;
        var process = Process.GetCurrentProcess();
        for (var i = 0; i < runs; i++)
        {
            process.Refresh();
            var cpuBefore = process.TotalProcessorTime;
            clock.Restart();
            using (var memory = GuestMemory.OpenElfDump(guest.DumpPath))
            {
                result = GuestIntrospection.Run(memory, layout);
                map = Classifier.Classify(memory, result, plain);
            }
            wall.Add(clock.Elapsed.TotalSeconds);
            process.Refresh();
            cpu.Add((process.TotalProcessorTime - cpuBefore).TotalSeconds);
        }
        var bytes = map.GuestPages * 4096.0;
        var medianWall = Median(wall);
        var medianCpu = Math.Max(Median(cpu), 1e-6);
        return new IntrospectFigures($"{guest.Spec.MemoryMiB} MiB", map.GuestPages, bytes / (1 << 30), runs, profileSeconds, medianWall, medianCpu,
            bytes / medianWall / 1e9, bytes / medianCpu / 1e9, map.Zero, map.Plain, map.Sealed, result.Diagnostics.Count);
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted[sorted.Count / 2];
    }
}
