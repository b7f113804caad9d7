using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SEmigrate.Guest.Memory;
using SEmigrate.Guest.Qemu;
using SEmigrate.Introspection;
using SEmigrate.Introspection.Classification;
using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate guest boot|introspect`: real Linux guests under QEMU, and what introspection
/// reads from their memory.</summary>
public static class GuestCommand
{
    public static RootCommand AddGuestCommand(this RootCommand root)
    {
        var guest = new Command("guest", "Boot real Linux guests under QEMU (dumped, or running on their own) and introspect guest memory");
        guest.Subcommands.Add(Boot());
        guest.Subcommands.Add(Introspect());
        guest.Subcommands.Add(LiveGuestCommands.Start());
        guest.Subcommands.Add(LiveGuestCommands.Stop());
        guest.Subcommands.Add(LiveGuestCommands.List());
        root.Subcommands.Add(guest);
        return root;
    }

    private static Command Boot()
    {
        var mem = new Option<string>("--mem") { Description = "Guest memory, e.g. 256M or 4G", DefaultValueFactory = _ => "256M" };
        var process = new Option<string[]>("--process")
        {
            Description = "NAME:MIB:MARKER: a process that fills MIB MiB with MARKER and stays (repeatable)",
            AllowMultipleArgumentsPerToken = false,
        };
        var freed = new Option<string[]>("--freed")
        {
            Description = "NAME:MIB:MARKER: a process that fills memory, frees it and exits, leaving stale markers (repeatable)",
        };
        var output = new Option<DirectoryInfo>("--out") { Description = "Folder for memory.elf, vmlinuz, serial.log, guest.json", Required = true };
        var command = new Command("boot", "Boot a guest with marker processes, dump its memory (ELF) and its in-guest ground truth")
        {
            mem, process, freed, output,
        };
        command.SetAction(async (parse, ct) =>
        {
            GuestSpec spec;
            try
            {
                spec = GuestSpec.Parse(parse.GetValue(mem)!, parse.GetValue(process), parse.GetValue(freed));
            }
            catch (FormatException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            var dir = parse.GetValue(output)!.FullName;
            var booted = await QemuGuest.BootAndDumpAsync(spec, dir, m => Console.Error.WriteLine($"guest: {m}"), ct);
            Console.WriteLine($"kernel {booted.GroundTruth.Release}; dump {booted.DumpPath}");
            foreach (var p in booted.GroundTruth.Processes)
            {
                Console.WriteLine($"process {p.Comm} (pid {p.Pid}): {p.Pfns.Count} pages per its pagemap");
            }
            return 0;
        });
        return command;
    }

    private static Command Introspect()
    {
        var image = new Option<FileInfo>("--image") { Description = "Guest memory: a QEMU ELF dump or a raw image", Required = true };
        var kernel = new Option<FileInfo>("--kernel") { Description = "The guest's kernel (vmlinuz or vmlinux), for its BTF", Required = true };
        var plain = new Option<string[]>("--plain-process") { Description = "A process whose memory is already encrypted and may travel as-is (repeatable)" };
        var map = new Option<FileInfo?>("--map") { Description = "Write the per-page classification map to this file" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of text" };
        var command = new Command("introspect",
            "Read the kernel release, tasks, free pages per zone and process pages from guest memory, and classify every page")
        {
            image, kernel, plain, map, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            var imagePath = parse.GetValue(image)!.FullName;
            var kernelPath = parse.GetValue(kernel)!.FullName;
            foreach (var path in new[] { imagePath, kernelPath }.Where(p => !File.Exists(p)))
            {
                await Console.Error.WriteLineAsync($"semigrate: {path} does not exist");
                return 2;
            }
            var clock = Stopwatch.StartNew();
            KernelLayout layout;
            GuestMemory memory;
            try
            {
                layout = KernelLayout.Load(kernelPath);
                memory = GuestMemory.Open(imagePath);
            }
            catch (Exception e) when (e is InvalidDataException or KeyNotFoundException or IOException)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            using (memory)
            {
                var profileSeconds = clock.Elapsed.TotalSeconds;
                var result = GuestIntrospection.Run(memory, layout);
                var classes = Classifier.Classify(memory, result, (parse.GetValue(plain) ?? []).ToHashSet(StringComparer.Ordinal));
                var seconds = clock.Elapsed.TotalSeconds;
                if (parse.GetValue(map) is { } mapFile)
                {
                    classes.Save(mapFile.FullName);
                }
                if (parse.GetValue(json))
                {
                    Console.WriteLine(JsonSerializer.Serialize(IntrospectReport.From(result, classes, profileSeconds, seconds), IntrospectReport.JsonOptions));
                }
                else
                {
                    IntrospectReport.WriteText(result, classes, Console.Out);
                }
                return result.Diagnostics.Count == 0 ? 0 : 3;
            }
        });
        return command;
    }
}
