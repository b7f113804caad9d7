using SEmigrate.TestSupport;

namespace SEmigrate.Workers.Tests;

public class CommandLineTests
{
    private static readonly Dictionary<string, string> NoEnvironment = [];

    [Fact]
    public async Task Help_lists_every_subcommand_with_a_description()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "--help");
        Assert.Equal(0, r.ExitCode);
        Assert.Matches(@"\n\s+services\s+\S.+\n", r.Stdout);
        Assert.Matches(@"\n\s+doctor\s+\S.+\n", r.Stdout);
        Assert.Matches(@"\n\s+guest\s+\S.+\n", r.Stdout);
    }

    [Theory]
    [InlineData("doctor")]
    [InlineData("services")]
    [InlineData("services", "up")]
    [InlineData("services", "down")]
    [InlineData("services", "status")]
    [InlineData("guest")]
    [InlineData("guest", "boot")]
    [InlineData("guest", "introspect")]
    [InlineData("guest", "start")]
    [InlineData("guest", "stop")]
    [InlineData("guest", "list")]
    [InlineData("bench", "paper")]
    [InlineData("worker")]
    [InlineData("migrate")]
    [InlineData("status")]
    [InlineData("audit")]
    [InlineData("vm")]
    [InlineData("vm", "list")]
    [InlineData("vm", "stop")]
    [InlineData("demo")]
    public async Task Every_subcommand_has_help(params string[] command)
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, [.. command, "--help"]);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("Description:", r.Stdout, StringComparison.Ordinal);
        Assert.Contains($"semigrate {string.Join(' ', command)}", r.Stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--main", "main-1", "is not NAME:SIZE")]
    [InlineData("--main", "main-1:lots", "is not a size")]
    [InlineData("--mode", "rot13", "rot13")]
    public async Task Migrate_refuses_bad_arguments_with_one_line_before_anything_starts(string option, string value, string message)
    {
        string[] args = ["migrate", "--guest", "/nonexistent", "--source", "s", "--main", "m:1M", "--sub", "a:1M"];
        var i = Array.IndexOf(args, option);
        args = i >= 0 ? [.. args[..(i + 1)], value, .. args[(i + 2)..]] : [.. args, option, value];

        var r = await SemigrateProcess.RunAsync(NoEnvironment, args);

        Assert.Equal(2, r.ExitCode);
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Trim().Split('\n'));
    }

    [Theory]
    [InlineData("--mem", "4G", "at most 3G for a running guest")]
    [InlineData("--workload", "-1", "must not be negative")]
    [InlineData("--process", "vaultdb", "is not NAME:MIB:MARKER")]
    public async Task Guest_start_refuses_bad_arguments_before_anything_starts(string option, string value, string message)
    {
        var guests = Directory.CreateTempSubdirectory("semigrate-cli-guests-");
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "guest", "start", "g1", "--guests", guests.FullName, option, value);

        Assert.Equal(2, r.ExitCode);
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
        Assert.Empty(guests.GetFileSystemInfos());
        guests.Delete();
    }

    [Fact]
    public async Task Bench_paper_refuses_a_bad_pass_count_before_anything_starts()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "bench", "paper", "--passes", "0");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--passes must be from 1 to 1000", r.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("10x")]
    [InlineData("m")]
    [InlineData("0m")]
    [InlineData("2d")]
    [InlineData("25h")]
    public async Task Bench_paper_refuses_a_bad_soak_duration_before_anything_starts(string soak)
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "bench", "paper", "--soak", soak);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains($"--soak takes a duration up to a day, as 90s, 10m or 1h, not '{soak}'", r.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Guest_stop_and_list_say_what_is_not_there()
    {
        var guests = Directory.CreateTempSubdirectory("semigrate-cli-guests-");
        var stop = await SemigrateProcess.RunAsync(NoEnvironment, "guest", "stop", "nobody", "--guests", guests.FullName);
        var list = await SemigrateProcess.RunAsync(NoEnvironment, "guest", "list", "--guests", guests.FullName);

        Assert.Equal(1, stop.ExitCode);
        Assert.Contains("guest nobody does not run here", stop.Stderr, StringComparison.Ordinal);
        Assert.Equal(0, list.ExitCode);
        Assert.Contains("no guests in", list.Stdout, StringComparison.Ordinal);
        guests.Delete();
    }

    [Fact]
    public async Task Temporal_setup_without_a_server_says_the_embedded_engine_needs_none_and_one_that_is_down_is_named()
    {
        var none = await SemigrateProcess.RunAsync(NoEnvironment, "temporal", "setup");
        Assert.Equal(2, none.ExitCode);
        Assert.Contains("Temporal:Address is not set (SEMIGRATE__Temporal__Address): the embedded engine needs no setup", none.Stderr, StringComparison.Ordinal);
        var down = await SemigrateProcess.RunAsync(new Dictionary<string, string> { ["SEMIGRATE__Temporal__Address"] = "127.0.0.1:1" }, "temporal", "setup");
        Assert.Equal(1, down.ExitCode);
        Assert.Contains("127.0.0.1:1", down.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_worker_with_an_unknown_role_or_a_bad_host_name_is_refused()
    {
        var role = await SemigrateProcess.RunAsync(NoEnvironment, "worker", "--role", "janitor", "--host", "h");
        Assert.NotEqual(0, role.ExitCode);
        Assert.Contains("janitor", role.Stderr + role.Stdout, StringComparison.Ordinal);
        var alone = await SemigrateProcess.RunAsync(NoEnvironment, "worker", "--role", "sub,orchestrator", "--host", "h");
        Assert.Equal(2, alone.ExitCode);
        Assert.Contains("--role orchestrator runs in a process of its own", alone.Stderr, StringComparison.Ordinal);
        var host = await SemigrateProcess.RunAsync(NoEnvironment, "worker", "--role", "sub", "--host", "two words");
        Assert.Equal(2, host.ExitCode);
        Assert.Contains("letters, digits", host.Stderr, StringComparison.Ordinal);
        // '.' and '_' separate the parts of a host's queue names: a name with one could name another host's queue.
        var dotted = await SemigrateProcess.RunAsync(NoEnvironment, "worker", "--role", "sub", "--host", "h1.dead");
        Assert.Equal(2, dotted.ExitCode);
        Assert.Contains("letters, digits and '-' only", dotted.Stderr, StringComparison.Ordinal);
        var anothers = await SemigrateProcess.RunAsync(new Dictionary<string, string> { ["SEMIGRATE__RabbitMq__Uri"] = "amqps://semigrate-host-h2:pw@127.0.0.1:1/" },
            "worker", "--role", "sub", "--host", "h1");
        Assert.Equal(2, anothers.ExitCode);
        Assert.Contains("logs in as semigrate-host-h2, another host's broker user", anothers.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Version_prints_the_product_version()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "--version");
        Assert.Equal(0, r.ExitCode);
        Assert.Matches(@"^\d+\.\d+\.\d+", r.Stdout);
    }

    [Fact]
    public async Task An_unknown_command_fails_with_a_message()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "teleport");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("teleport", r.Stderr + r.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Services_status_says_both_run_after_up_and_env_prints_the_settings()
    {
        var settings = await ServicesScript.SettingsAsync();
        var status = await SemigrateProcess.RunAsync(NoEnvironment, "services", "status");
        Assert.Equal(0, status.ExitCode);
        Assert.Contains("postgres: running", status.Stderr, StringComparison.Ordinal);
        Assert.Contains("rabbitmq: running", status.Stderr, StringComparison.Ordinal);

        var env = await SemigrateProcess.RunAsync(NoEnvironment, "services", "env");
        var printed = ServicesScript.ParseSettings(env.Stdout);
        Assert.Equal(settings.Keys.Order(), printed.Keys.Order());
        Assert.Equal(settings["SEMIGRATE__Postgres__ConnectionString"], printed["SEMIGRATE__Postgres__ConnectionString"]);
        // The tests' broker settings are the printed ones on the tests' own virtual host.
        const string rabbit = "SEMIGRATE__RabbitMq__Uri";
        Assert.Equal(new UriBuilder(printed[rabbit]) { Path = "/" + ServicesScript.TestVirtualHost }.Uri.ToString(), settings[rabbit]);
    }

    [Fact]
    public async Task A_second_services_up_is_a_no_op()
    {
        await ServicesScript.SettingsAsync();
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "services", "up");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("postgres: already running", r.Stderr, StringComparison.Ordinal);
        Assert.Contains("rabbitmq: already running", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("starting", r.Stderr, StringComparison.Ordinal);
    }
}
