using System.CommandLine;
using SEmigrate.Guest.Qemu;

namespace SEmigrate.Workers.Commands;

/// <summary>`semigrate guest start|stop|list`: running guests that live on their own in a guests folder
/// (the source worker's --guests), each with its RAM in a file there, controlled over QMP; a migration
/// names one, pauses it for the stop-and-copy, and ends it here once it runs at the main host.</summary>
public static class LiveGuestCommands
{
    private static Option<DirectoryInfo> GuestsOption() => new("--guests")
    {
        Description = "The guests folder (the source worker's --guests)",
        DefaultValueFactory = _ => new DirectoryInfo("/opt/semigrate/guests"),
    };

    public static Command Start()
    {
        var name = new Argument<string>("NAME") { Description = "The guest's name: a folder in the guests folder" };
        var guests = GuestsOption();
        var mem = new Option<string>("--mem") { Description = "Guest memory, e.g. 256M or 2G (at most 3G: the RAM file maps guest memory from 0)", DefaultValueFactory = _ => "256M" };
        var process = new Option<string[]>("--process") { Description = "NAME:MIB:MARKER: a process that fills MIB MiB with MARKER and stays (repeatable)" };
        var freed = new Option<string[]>("--freed") { Description = "NAME:MIB:MARKER: a process that fills memory, frees it and exits (repeatable)" };
        var workload = new Option<int>("--workload") { Description = "MiB the workload checks and rewrites for ever, reporting each pass on the serial log (0: none)" };
        var command = new Command("start", "Boot a guest that runs on its own (QEMU in the background), its RAM a file in its folder") { name, guests, mem, process, freed, workload };
        command.SetAction(async (parse, ct) =>
        {
            GuestSpec spec;
            try
            {
                spec = GuestSpec.Parse(parse.GetValue(mem)!, parse.GetValue(process), parse.GetValue(freed), parse.GetValue(workload));
                if (spec.MemoryMiB > 3072)
                {
                    throw new FormatException("--mem: at most 3G for a running guest (its RAM file maps guest memory from 0)");
                }
            }
            catch (FormatException e)
            {
                await Console.Error.WriteLineAsync($"semigrate: {e.Message}");
                return 2;
            }
            var folder = Folder(parse.GetValue(guests)!, parse.GetValue(name)!);
            if (File.Exists(LiveGuest.SocketIn(folder)) && LiveGuest.IsRunning(folder))
            {
                await Console.Error.WriteLineAsync($"semigrate: guest {parse.GetValue(name)} already runs ({folder})");
                return 1;
            }
            await QemuGuest.PrepareKitAsync(folder, spec, ct);
            await LiveGuest.StartInFolderAsync(folder, spec.MemoryMiB, ct);
            Console.WriteLine($"guest {parse.GetValue(name)} runs ({spec.MemoryMiB} MiB, RAM {LiveGuest.RamIn(folder)}, serial {Path.Combine(folder, "serial.log")})");
            return 0;
        });
        return command;
    }

    public static Command Stop()
    {
        var name = new Argument<string>("NAME") { Description = "The guest's name" };
        var guests = GuestsOption();
        var command = new Command("stop", "End a running guest") { name, guests };
        command.SetAction(async (parse, ct) =>
        {
            var folder = Folder(parse.GetValue(guests)!, parse.GetValue(name)!);
            if (!LiveGuest.IsRunning(folder))
            {
                await Console.Error.WriteLineAsync($"semigrate: guest {parse.GetValue(name)} does not run here");
                return 1;
            }
            await using var guest = await LiveGuest.AttachAsync(folder, ct);
            await guest.QuitAsync();
            Console.WriteLine($"guest {parse.GetValue(name)} stopped");
            return 0;
        });
        return command;
    }

    public static Command List()
    {
        var guests = GuestsOption();
        var command = new Command("list", "The guests of a guests folder: running or not, memory, the workload's last pass") { guests };
        command.SetAction(parse =>
        {
            var root = parse.GetValue(guests)!;
            var found = root.Exists ? root.GetDirectories().Where(d => LiveGuest.IsLive(d.FullName) || File.Exists(BootedGuest.DumpIn(d.FullName))).ToList() : [];
            if (found.Count == 0)
            {
                Console.WriteLine($"no guests in {root.FullName}");
            }
            foreach (var d in found.OrderBy(d => d.Name, StringComparer.Ordinal))
            {
                if (!LiveGuest.IsLive(d.FullName))
                {
                    Console.WriteLine($"{d.Name,-16} dump     (memory.elf)");
                    continue;
                }
                var serial = Path.Combine(d.FullName, "serial.log");
                var last = File.Exists(serial) ? LiveGuest.PassesIn(File.ReadAllText(serial)).LastOrDefault() : null;
                Console.WriteLine($"{d.Name,-16} {(LiveGuest.IsRunning(d.FullName) ? "running" : "stopped"),-8} {LiveGuest.MemoryMiBIn(d.FullName)} MiB" +
                    (last is null ? "" : $"  workload pass {last.Pass}, {last.Errors} pages ever wrong"));
            }
            return 0;
        });
        return command;
    }

    private static string Folder(DirectoryInfo guests, string name) =>
        name.Length > 0 && name[0] != '.' && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.') ? Path.Combine(guests.FullName, name)
        : throw new FormatException($"'{name}' is not a guest name (letters, digits, '-', '_', '.')");

}
